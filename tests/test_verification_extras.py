"""The embeddings file, the resumable embedding store, the protocol of a list, and bench_verification at a tiny
size (the pictures of several systems / lists and the projections: tests/test_plots.py)."""

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from speaker.embed_store import EmbedStore, load_embeddings, save_embeddings
from speaker.trial_lists import KNOWN_LISTS, cost_model, list_info, protocol_lines

ROOT = Path(__file__).resolve().parents[1]


def test_embeddings_file_round_trip_and_errors(tmp_path):
    p = save_embeddings(str(tmp_path / "e.npz"), ["a", "b"], np.eye(2), {"mode": "full"}, speakers=["s", "t"])
    ids, emb, prot, spk = load_embeddings(p)
    assert ids == ["a", "b"] and prot == {"mode": "full"} and spk == ["s", "t"] and emb.dtype == np.float32
    np.savez(tmp_path / "old.npz", ids=np.array(["a"]), embeddings=np.ones((1, 3)))  # an older file: no protocol
    assert load_embeddings(str(tmp_path / "old.npz"))[2] == {}
    np.savez(tmp_path / "bad.npz", x=np.ones(2))
    with pytest.raises(ValueError, match="bad.npz: needs arrays 'ids' and 'embeddings'"):
        load_embeddings(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "dup.npz", ids=np.array(["a", "a"]), embeddings=np.ones((2, 3)))
    with pytest.raises(ValueError, match="not unique"):
        load_embeddings(str(tmp_path / "dup.npz"))


def test_embed_store_resumes_and_refuses_another_list(tmp_path):
    folder = str(tmp_path / "p")
    ids = [f"u{i}" for i in range(7)]
    seen = []

    def fn(part):
        seen.extend(part)
        return np.array([[int(u[1:]), 1.0] for u in part])

    store = EmbedStore(folder, ids, {"crops": 3})
    store.add(ids[:3], fn(ids[:3]))
    again = EmbedStore(folder, ids, {"crops": 3})
    assert len(again) == 3 and again.todo() == ids[3:]
    seen.clear()
    emb = again.run(fn, chunk=2)
    assert seen == ids[3:]
    np.testing.assert_array_equal(emb[:, 0], np.arange(7))
    with pytest.raises(ValueError, match="the utterance list"):
        EmbedStore(folder, ids[:-1], {"crops": 3})


def test_list_info_and_protocol_lines(tmp_path):
    p = tmp_path / "veri_test.txt"
    p.write_text("1 a/b/00001.wav a/c/00001.wav\n0 a/b/00001.wav d/c/00001.wav\n")
    info = list_info(str(p), 2, 1)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    assert info == {"file": "veri_test.txt", "path": str(p), "name": "custom", "n_trials": 2, "sha256": sha,
                    "sha256_prefix": sha[:12], "n_scored": 1}
    lines = protocol_lines([info], cost_model([0.01, 0.05], 1, 1))
    assert lines[0] == f"trial list veri_test.txt (custom): 2 trials, 1 scored, sha256 {sha[:12]}"
    assert "P_target 0.01, 0.05" in lines[1]


def test_a_list_is_named_by_the_sha256_of_its_bytes(tmp_path, monkeypatch):
    """KNOWN_LISTS names a list by the sha256 of the file data_utils.py lists writes: those exact bytes are
    named, a copy with any other byte (here Windows line ends) is 'custom'."""
    import speaker.trial_lists as trial_lists

    written = tmp_path / "veri_test.txt"
    written.write_bytes(b"1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
                        b"0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav\n")
    sha = hashlib.sha256(written.read_bytes()).hexdigest()
    monkeypatch.setattr(trial_lists, "KNOWN_LISTS", {**KNOWN_LISTS, sha: "VoxCeleb1-O"})
    info = list_info(str(written), 2)
    assert info["name"] == "VoxCeleb1-O" and info["sha256"] == sha
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(written.read_bytes().replace(b"\n", b"\r\n"))
    assert list_info(str(crlf), 2)["name"] == "custom"


@pytest.mark.slow
def test_bench_verification_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_verification", ROOT / "bench" / "bench_verification.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    spec = importlib.util.spec_from_file_location("tiny_net_module", Path(__file__).with_name("test_full_utterance.py"))
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    net_text, trunk_h = tiny.net_text, tiny.trunk_h

    (tmp_path / "net.prototxt").write_text(net_text(20, trunk_h(20)))
    ids = [f"id1000{s}/v/0000{u}.wav" for s in range(4) for u in range(3)]
    (tmp_path / "t.txt").write_text("".join(f"{int(a[:7] == b[:7])} {a} {b}\n" for a in ids for b in ids if a < b))
    out = tmp_path / "b.json"
    assert bench.main(["--net", str(tmp_path / "net.prototxt"), "--utts", "2", "--seconds", "1", "--crops", "4",
                       "--trials", str(tmp_path / "t.txt"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for v in res["embedding"]["seconds_per_1000"].values():
        assert math.isfinite(v) and v > 0
    assert res["scoring"]["n_trials"] == 66 and res["scoring"]["n_utterances"] == 12
    assert "ratio 4 crops / full" in capsys.readouterr().out
