"""The synthetic corpus: VoxCeleb1 layout, list formats, determinism."""

import hashlib
import re

import numpy as np
import pytest
import soundfile as sf

import data_utils
from voxdata import read_iden_split, read_meta, read_trials
from voxdata.synth import make_corpus


def _digest(root):
    h = {}
    for p in sorted((root / "wav").rglob("*.wav")):
        h[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    for name in ("iden_split.txt", "veri_test.txt", "vox1_meta.csv"):
        h[name] = hashlib.sha1((root / name).read_bytes()).hexdigest()
    return h


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "c"
    rc = data_utils.main(
        [
            "synth",
            "--out",
            str(root),
            "--speakers",
            "5",
            "--utterances",
            "6",
            "--test-speakers",
            "2",
            "--min-dur",
            "1",
            "--max-dur",
            "1.5",
            "--trials",
            "20",
            "--workers",
            "2",
            "--quiet",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    return root


def test_layout_and_audio(corpus):
    files = sorted((corpus / "wav").rglob("*.wav"))
    assert len(files) == 30
    for f in files:
        rel = f.relative_to(corpus / "wav").as_posix()
        assert re.fullmatch(r"id1000[1-5]/[A-Za-z0-9_-]{11}/\d{5}\.wav", rel), rel
        info = sf.info(str(f))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 16000 <= info.frames <= 24000
    x, _ = sf.read(str(files[0]), dtype="int16")
    assert x.std() > 100  # not silence


def test_lists(corpus):
    lines = (corpus / "iden_split.txt").read_text().splitlines()
    assert len(lines) == 30 and all(re.fullmatch(r"[123] id\d{5}/\S{11}/\d{5}\.wav", ln) for ln in lines)
    s = read_iden_split(corpus / "iden_split.txt")
    assert s.speakers == [f"id1000{i}" for i in range(1, 6)] and s.missing == []
    # every speaker has train, validation and test utterances, from different videos
    for sp in range(5):
        vids = {
            n: {p.split("/")[1] for p, lab in zip(u.paths, u.labels) if lab == sp}
            for n, u in (("train", s.train), ("val", s.val), ("test", s.test))
        }
        assert all(vids.values()) and not (vids["train"] & vids["test"]) and not (vids["val"] & vids["test"])
    meta = read_meta(corpus / "vox1_meta.csv")
    assert [k for k, v in meta.items() if v == "test" and k.startswith("id")] == ["id10004", "id10005"]
    v = read_iden_split(corpus / "iden_split.txt", mode="verification")
    assert v.test_speakers == ["id10004", "id10005"] and len(v.test) == 12
    assert len(v.train) + len(v.val) == 18
    t = read_trials(corpus / "veri_test.txt", check_files=True)
    assert len(t) == 20 and t.labels.sum() == 10 and t.missing == []
    for lab, a, b in zip(t.labels, t.enrol, t.test):
        assert a.split("/")[0] in v.test_speakers and b.split("/")[0] in v.test_speakers
        assert (a.split("/")[0] == b.split("/")[0]) == bool(lab) and a != b
    assert len(set(zip(t.enrol, t.test))) == 20


def test_deterministic_for_seed_and_workers(corpus, tmp_path):
    kw = dict(speakers=5, utterances=6, test_speakers=2, min_dur=1, max_dur=1.5, trials=20, progress=False)
    make_corpus(tmp_path / "a", seed=3, workers=1, **kw)
    assert _digest(tmp_path / "a") == _digest(corpus)
    make_corpus(
        tmp_path / "b", seed=4, workers=1, **{**kw, "speakers": 3, "utterances": 3, "test_speakers": 2}
    )
    x, _ = sf.read(str(next((tmp_path / "b" / "wav").rglob("00001.wav"))), dtype="int16")
    y, _ = sf.read(str(next((tmp_path / "a" / "wav").rglob("00001.wav"))), dtype="int16")
    assert len(x) != len(y) or not np.array_equal(x, y)
    with pytest.raises(ValueError, match="test_speakers"):
        make_corpus(tmp_path / "c", seed=0, **{**kw, "test_speakers": 1})


def test_cache_cli(corpus, tmp_path):
    from voxdata import WavCache, read_wav

    assert (
        data_utils.main(["cache", "--iden-split", str(corpus / "iden_split.txt"), "--out", str(tmp_path)])
        == 0
    )
    s = read_iden_split(corpus / "iden_split.txt")
    c = WavCache(tmp_path)
    assert len(c) == 30
    p = s.abspaths(s.test)[0]
    np.testing.assert_array_equal(c.get(p), read_wav(p))
