"""iden_split.txt / trial list parsing, both layouts, both modes."""

import json
import random

import numpy as np
import pytest

from voxdata import ListFormatError, load_labels, read_iden_split, read_trials

CURRENT = """\
1 id10001/1zcIwhmdeo4/00001.wav
1 id10001/1zcIwhmdeo4/00002.wav
2 id10001/7w0IBEWc9Qw/00001.wav
3 id10001/Y8hIVOBuels/00001.wav
1 id10270/5r0dWxy17C8/00001.wav
2 id10270/5r0dWxy17C8/00002.wav
3 id10270/x6uYqmx31kE/00001.wav
1 id10309/aaaaaaaaaaa/00001.wav
3 id10309/aaaaaaaaaaa/00002.wav
1 id10310/bbbbbbbbbbb/00001.wav
2 id10310/bbbbbbbbbbb/00002.wav
3 id10310/ccccccccccc/00001.wav
"""

OLD = """\
1 A.J._Buckley/1zcIwhmdeo4_0000001.wav
2 A.J._Buckley/1zcIwhmdeo4_0000002.wav
3 A.J._Buckley/7w0IBEWc9Qw_0000001.wav
1 Eartha_Kitt/x6uYqmx31kE_0000001.wav
3 Eartha_Kitt/x6uYqmx31kE_0000002.wav
1 Zac_Efron/abcdefghijk_0000001.wav
2 Zac_Efron/abcdefghijk_0000002.wav
"""


def _write(tmp_path, text, name="iden_split.txt", make_files=True, wav_sub="wav"):
    p = tmp_path / name
    p.write_text(text)
    if make_files:
        for line in text.splitlines():
            f = tmp_path / wav_sub / line.split()[1]
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
    return p


def test_identification_current_layout(tmp_path):
    s = read_iden_split(_write(tmp_path, CURRENT))
    assert s.layout == "current" and s.mode == "identification"
    assert s.speakers == ["id10001", "id10270", "id10309", "id10310"]
    assert s.test_speakers == s.speakers
    assert s.train.paths == [
        "id10001/1zcIwhmdeo4/00001.wav",
        "id10001/1zcIwhmdeo4/00002.wav",
        "id10270/5r0dWxy17C8/00001.wav",
        "id10309/aaaaaaaaaaa/00001.wav",
        "id10310/bbbbbbbbbbb/00001.wav",
    ]
    assert s.train.labels.tolist() == [0, 0, 1, 2, 3] and s.train.labels.dtype == np.int64
    assert s.val.labels.tolist() == [0, 1, 3]
    assert s.test.labels.tolist() == [0, 1, 2, 3]
    assert s.wav_dir == str(tmp_path / "wav")
    assert s.abspath(s.train.paths[0]) == str(tmp_path / "wav" / "id10001/1zcIwhmdeo4/00001.wav")
    assert s.missing == []


def test_verification_current_layout_voxceleb_rule(tmp_path):
    s = read_iden_split(_write(tmp_path, CURRENT), mode="verification")
    # id10270..id10309 are VoxCeleb1's test speakers
    assert s.test_speakers == ["id10270", "id10309"]
    assert s.speakers == ["id10001", "id10310"]
    # train = splits 1 and 3 of the other speakers, val = their split 2
    assert s.train.paths == [
        "id10001/1zcIwhmdeo4/00001.wav",
        "id10001/1zcIwhmdeo4/00002.wav",
        "id10001/Y8hIVOBuels/00001.wav",
        "id10310/bbbbbbbbbbb/00001.wav",
        "id10310/ccccccccccc/00001.wav",
    ]
    assert s.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert s.val.paths == ["id10001/7w0IBEWc9Qw/00001.wav", "id10310/bbbbbbbbbbb/00002.wav"]
    assert len(s.test) == 5 and s.test.labels.tolist() == [0, 0, 0, 1, 1]


def test_verification_meta_overrides_rule(tmp_path):
    p = _write(tmp_path, CURRENT)
    (tmp_path / "vox1_meta.csv").write_text(
        "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
        "id10001\tA\tm\tX\tdev\nid10270\tB\tf\tX\tdev\nid10309\tC\tm\tX\tdev\nid10310\tD\tf\tX\ttest\n"
    )
    s = read_iden_split(p, mode="verification")
    assert s.test_speakers == ["id10310"]
    assert s.speakers == ["id10001", "id10270", "id10309"]


def test_2017_layout(tmp_path):
    p = _write(tmp_path, OLD, wav_sub=".")
    s = read_iden_split(p)
    assert s.layout == "2017" and s.wav_dir == str(tmp_path)
    assert s.speakers == ["A.J._Buckley", "Eartha_Kitt", "Zac_Efron"]
    assert s.train.labels.tolist() == [0, 1, 2] and s.test.labels.tolist() == [0, 1]
    v = read_iden_split(p, mode="verification")
    assert v.test_speakers == ["Eartha_Kitt"]  # names starting with "E"
    assert v.speakers == ["A.J._Buckley", "Zac_Efron"]
    assert v.train.paths == [
        "A.J._Buckley/1zcIwhmdeo4_0000001.wav",
        "A.J._Buckley/7w0IBEWc9Qw_0000001.wav",
        "Zac_Efron/abcdefghijk_0000001.wav",
    ]


def test_labels_stable_under_line_order_and_missing_files(tmp_path):
    a = read_iden_split(_write(tmp_path, CURRENT))
    lines = CURRENT.splitlines()
    random.Random(0).shuffle(lines)
    other = tmp_path / "other"
    other.mkdir()
    p = _write(other, "\n".join(lines) + "\n")
    (other / "wav" / "id10001/1zcIwhmdeo4/00002.wav").unlink()
    b = read_iden_split(p, missing_log=other / "missing.txt")
    assert a.speakers == b.speakers
    lab_a = dict(zip(a.train.paths, a.train.labels.tolist()))
    lab_b = dict(zip(b.train.paths, b.train.labels.tolist()))
    assert all(lab_a[k] == v for k, v in lab_b.items())
    assert b.missing == ["id10001/1zcIwhmdeo4/00002.wav"] and len(b.train) == len(a.train) - 1
    assert (other / "missing.txt").read_text().split() == b.missing


def test_missing_files_reported_once(tmp_path, caplog):
    p = _write(tmp_path, CURRENT, make_files=False)
    with caplog.at_level("WARNING"):
        s = read_iden_split(p)
    assert len(s.missing) == 12 and len(s.train) == 0
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "12 files" in warnings[0].getMessage()
    assert len(read_iden_split(p, check_files=False).train) == 5


@pytest.mark.parametrize(
    "bad, lineno",
    [
        ("1 id10001/1zcIwhmdeo4/00001.wav\n4 id10001/1zcIwhmdeo4/00002.wav\n", 2),
        ("1 id10001/1zcIwhmdeo4/00001.wav\n\n1 id10001/00002.wav extra\n", 3),
        ("1 id10001.wav\n", 1),
        ("1 id10001/1zcIwhmdeo4/00001.wav\n1 Name/vid_0000001.wav\n", 2),  # mixed layouts
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, bad, lineno):
    p = _write(tmp_path, bad, make_files=False)
    with pytest.raises(ListFormatError, match=rf"iden_split.txt:{lineno}:"):
        read_iden_split(p)


def test_no_test_speakers_is_an_error(tmp_path):
    p = _write(tmp_path, "1 id10001/1zcIwhmdeo4/00001.wav\n", make_files=False)
    with pytest.raises(ListFormatError, match="no verification test speakers"):
        read_iden_split(p, mode="verification")


def test_save_and_load_labels(tmp_path):
    s = read_iden_split(_write(tmp_path, CURRENT), mode="verification")
    s.save_labels(tmp_path / "labels.json")
    d = load_labels(tmp_path / "labels.json")
    assert d["speakers"] == s.speakers and d["test_speakers"] == s.test_speakers
    assert d["mode"] == "verification"
    assert json.loads((tmp_path / "labels.json").read_text())["speakers"][1] == "id10310"


def test_trials(tmp_path):
    p = tmp_path / "veri_test.txt"
    p.write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav\n\n"
    )
    t = read_trials(p)
    assert t.labels.tolist() == [1, 0] and t.labels.dtype == np.int64
    assert t.enrol == ["id10270/x6uYqmx31kE/00001.wav"] * 2
    assert t.test[1] == "id10300/ize_eiCFEg0/00003.wav"
    assert t.utterances() == sorted({*t.enrol, *t.test}) and len(t.utterances()) == 3
    assert t.wav_dir == str(tmp_path / "wav")
    # with check_files the trials touching a missing file are dropped and the file counted
    (tmp_path / "wav/id10270/x6uYqmx31kE").mkdir(parents=True)
    (tmp_path / "wav/id10270/8jEAjG6SegY").mkdir(parents=True)
    (tmp_path / "wav/id10270/x6uYqmx31kE/00001.wav").write_bytes(b"")
    (tmp_path / "wav/id10270/8jEAjG6SegY/00008.wav").write_bytes(b"")
    c = read_trials(p, check_files=True)
    assert c.labels.tolist() == [1] and c.missing == ["id10300/ize_eiCFEg0/00003.wav"]


def test_trials_2017_layout_and_errors(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("1 Eartha_Kitt/x6uYqmx31kE_0000001.wav Eartha_Kitt/x6uYqmx31kE_0000002.wav\n")
    t = read_trials(p)
    assert t.wav_dir == str(tmp_path) and t.labels.tolist() == [1]
    p.write_text("1 a/b/c.wav a/b/d.wav\n2 a/b/c.wav a/b/d.wav\n")
    with pytest.raises(ListFormatError, match=r"list.txt:2:"):
        read_trials(p)
    p.write_text("1 a/b/c.wav\n")
    with pytest.raises(ListFormatError, match=r"list.txt:1:"):
        read_trials(p)
