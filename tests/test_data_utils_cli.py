"""data_utils.py: argument errors are usage errors (exit 2), not tracebacks; `cache` exits 1 when it caches
nothing."""

import pytest

import data_utils


def test_synth_argument_errors_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        data_utils.main(["synth", "--out", str(tmp_path / "c"), "--speakers", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "at least 2 speakers" in err and "Traceback" not in err


def test_cache_exits_nonzero_when_it_finds_no_files(tmp_path, capsys):
    assert data_utils.main(["cache", "--iden-split", str(tmp_path / "none.txt"), "--out", str(tmp_path / "c")]) == 1
    assert "no such file" in capsys.readouterr().err
    lst = tmp_path / "iden_split.txt"
    lst.write_text("1 id10001/abcdefghijk/00001.wav\n")
    assert data_utils.main(["cache", "--iden-split", str(lst), "--out", str(tmp_path / "c")]) == 1
    assert "none of its 1 files exists" in capsys.readouterr().err


def test_cache_builds_from_a_corpus(tmp_path):
    from voxdata import WavCache, make_corpus

    make_corpus(tmp_path / "corpus", speakers=3, utterances=3, test_speakers=2, seed=0, min_videos=3,
                max_videos=3, min_dur=0.5, max_dur=0.6, trials=4, workers=1, progress=False)
    assert data_utils.main(["cache", "--iden-split", str(tmp_path / "corpus" / "iden_split.txt"),
                            "--out", str(tmp_path / "cache")]) == 0
    assert len(WavCache(tmp_path / "cache")) == 9
