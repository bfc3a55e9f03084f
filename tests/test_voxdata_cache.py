"""The audio cache (voxdata.cache, `data_utils.py cache`): decoded in worker processes, equal to reading the files
(wav and m4a); stopped at a chosen file (the parent killed, a worker killed, an exception, SIGINT, SIGTERM) it keeps
what it journaled, nothing looks complete, and the next build continues to the same cache; a file changed since
it was decoded is refused by the reader (one line naming it) and decoded again by the next build."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import data_utils
import voxdata.cache as vc
from voxdata import AudioError, read_iden_split, read_wav
from voxdata.cache import CacheError, StaleCacheError, WavCache, build_cache
from voxdata.m4a import write_m4a

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(corpus, tmp_path_factory):
    """(the shared corpus' root, every recording of its list) and two of them also as m4a (in a folder of
    their own): the cache holds whatever read_wav decodes."""
    splits = read_iden_split(corpus / "iden_split.txt")
    paths = splits.abspaths(splits.train) + splits.abspaths(splits.val) + splits.abspaths(splits.test)
    m4a = tmp_path_factory.mktemp("m4a")
    for i, p in enumerate(paths[:2]):
        write_m4a(m4a / f"{i}.m4a", read_wav(p))
    return corpus, paths + [str(m4a / f"{i}.m4a") for i in range(2)]


def assert_complete(cache_dir, paths):
    cache = WavCache(cache_dir)
    assert len(cache) == len(paths)
    for p in paths:
        np.testing.assert_array_equal(cache.get(p), read_wav(p), err_msg=p)
    assert not (Path(cache_dir) / vc.JOURNAL).exists()


def test_parallel_build_equals_reading_the_files(files, tmp_path):
    _, paths = files
    cache = build_cache(paths, tmp_path / "c", progress=False, workers=2)
    assert_complete(tmp_path / "c", paths)
    s = cache.build_stats
    assert s.decoded == len(paths) and s.reused == 0 and s.workers == 2
    assert s.samples == sum(len(read_wav(p)) for p in paths)
    # a second build finds everything current and decodes nothing
    again = build_cache(paths, tmp_path / "c", progress=False, workers=2)
    assert again.build_stats.decoded == 0 and again.build_stats.reused == len(paths)


KILL_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, os, signal, sys
    from voxdata.cache import build_cache
    paths, out, k = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def kill(n):
        if n == k:
            print(json.dumps([p.pid for p in multiprocessing.active_children()
                              if p.name == "voxdata-cache-worker"]), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    build_cache(paths, out, progress=False, workers=2, on_file=kill)
""")


def wait_gone(pids, limit=60.0):
    """Wait until none of `pids` exists (each polls every 0.05 s; `limit` only bounds a failure)."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return []
        time.sleep(0.05)
    return alive


@pytest.mark.parametrize("k", [1, 9])
def test_parent_killed_after_k_files_then_resumed(files, tmp_path, k):
    _, paths = files
    out = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(paths), str(out), str(k)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)     # a hang guard only: it takes seconds
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    workers = json.loads(proc.stdout)
    assert len(workers) == 2 and wait_gone(workers) == []           # orphaned workers exit by themselves (EOF)
    assert not (out / vc.INDEX).exists()                          # nothing looks complete
    with pytest.raises(CacheError, match="did not finish"):
        WavCache(out)
    journaled = [json.loads(line) for line in (out / vc.JOURNAL).read_text().splitlines()]
    assert len([d for d in journaled if "p" in d]) >= k
    cache = build_cache(paths, out, progress=False, workers=2)
    assert cache.build_stats.decoded + cache.build_stats.reused == len(paths)
    assert cache.build_stats.decoded <= len(paths) - k               # the k journaled files were kept
    assert_complete(out, paths)


def test_a_killed_worker_is_one_error_and_the_build_resumes(files, tmp_path):
    import multiprocessing

    _, paths = files

    def kill_a_worker(n):            # every worker has tasks in flight then: its death cannot go unnoticed
        if n == 5:
            workers = [p for p in multiprocessing.active_children() if p.name == vc._Pool.NAME]
            os.kill(workers[0].pid, signal.SIGKILL)

    with pytest.raises(CacheError) as e:
        build_cache(paths, tmp_path / "c", progress=False, workers=2, on_file=kill_a_worker)
    assert "a decoding worker died" in str(e.value) and "build again" in str(e.value)
    assert not (tmp_path / "c" / vc.INDEX).exists()
    cache = build_cache(paths, tmp_path / "c", progress=False, workers=2)
    assert cache.build_stats.reused >= 5
    assert_complete(tmp_path / "c", paths)


def test_exception_in_the_parent_keeps_the_work(files, tmp_path, caplog):
    _, paths = files

    def boom(n):
        if n == 4:
            raise RuntimeError("disk on fire")

    import multiprocessing

    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_cache(paths, tmp_path / "c", progress=False, workers=2, on_file=boom)
    assert set(multiprocessing.active_children()) <= before          # the workers were terminated
    stopped = [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()]
    assert len(stopped) == 1 and "after 4 of" in stopped[0] and "RuntimeError: disk on fire" in stopped[0]
    cache = build_cache(paths, tmp_path / "c", progress=False, workers=2)
    assert cache.build_stats.reused >= 4
    assert_complete(tmp_path / "c", paths)


SIGNAL_SCRIPT = textwrap.dedent("""
    import functools, multiprocessing, os, signal, sys
    import data_utils
    k, sig = int(sys.argv[1]), getattr(signal, sys.argv[2])
    data_utils.build_cache = functools.partial(
        data_utils.build_cache, on_file=lambda n: os.kill(os.getpid(), sig) if n == k else None)
    rc = data_utils.main(sys.argv[3:])
    print("workers left:", len(multiprocessing.active_children()))
    sys.exit(rc)
""")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_cli_stops_after_the_current_file_on_a_signal_with_one_line_and_continues(files, tmp_path, sig):
    root, paths = files
    args = ["cache", "--iden-split", str(root / "iden_split.txt"), "--out", str(tmp_path / "c"), "--quiet",
            "--workers", "2"]
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, "3", sig, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)     # a hang guard only: it takes seconds
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    assert proc.stdout.strip() == "workers left: 0"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"stopped ({sig}) after 3 of" in lines[0] and "build again" in lines[0], lines
    assert not (tmp_path / "c" / vc.INDEX).exists()
    assert data_utils.main(args) == 0
    wavs = [p for p in paths if p.endswith(".wav")]
    assert_complete(tmp_path / "c", wavs)


def test_changed_file_is_refused_then_decoded_again(files, tmp_path):
    _, paths = files
    own = tmp_path / "x.wav"
    own.write_bytes(Path(paths[0]).read_bytes())
    cache = build_cache([str(own)], tmp_path / "c", progress=False, workers=1)
    before = cache.get(str(own)).copy()
    data = read_wav(own)
    from voxdata import write_wav

    write_wav(own, data[::-1])                             # same size, new samples, new mtime
    fresh = WavCache(tmp_path / "c")
    with pytest.raises(StaleCacheError) as e:
        fresh.get(str(own))
    assert str(e.value).startswith(f"{own}: changed since it was decoded") and "\n" not in str(e.value)
    assert fresh.stale([str(own)]) and isinstance(e.value, AudioError)
    cache = build_cache([str(own)], tmp_path / "c", progress=False, workers=1)
    assert cache.build_stats.decoded == 1
    np.testing.assert_array_equal(cache.get(str(own)), data[::-1])
    assert not np.array_equal(before, data[::-1])


def test_hash_catches_a_file_replaced_with_its_old_mtime(files, tmp_path):
    _, paths = files
    own = tmp_path / "x.wav"
    own.write_bytes(Path(paths[0]).read_bytes())
    build_cache([str(own)], tmp_path / "c", progress=False, workers=1, hash_sources=True)
    st = os.stat(own)
    from voxdata import write_wav

    write_wav(own, read_wav(own)[::-1])
    os.utime(own, ns=(st.st_atime_ns, st.st_mtime_ns))      # size and mtime as before
    assert WavCache(tmp_path / "c").stale([str(own)]) == []
    plain = build_cache([str(own)], tmp_path / "c", progress=False, workers=1)
    assert plain.build_stats.decoded == 0                       # size and mtime alone cannot see it
    hashed = build_cache([str(own)], tmp_path / "c", progress=False, workers=1, hash_sources=True)
    assert hashed.build_stats.decoded == 1
    np.testing.assert_array_equal(hashed.get(str(own)), read_wav(own))


def test_unsynced_tail_is_checked_and_a_damaged_entry_decoded_again(files, tmp_path):
    """As after a power cut: journal lines after the last sync whose samples did not reach the disk."""
    _, paths = files
    out = tmp_path / "c"

    def stop(n):
        if n == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, out, progress=False, workers=1, on_file=stop)
    lines = (out / vc.JOURNAL).read_text().splitlines()
    # drop the sync lines the stop wrote (as if it never synced), then zero the samples of the 3rd entry
    entries = [json.loads(x) for x in lines if "p" in json.loads(x)]
    (out / vc.JOURNAL).write_text("".join(json.dumps(d) + "\n" for d in entries))
    third = entries[2]
    with open(out / vc.SAMPLES, "r+b") as f:
        f.seek(2 * third["o"])
        f.write(b"\0" * 2 * third["n"])
    cache = build_cache(paths, out, progress=False, workers=1)
    assert cache.build_stats.reused == 5 and cache.build_stats.decoded == len(paths) - 5
    assert_complete(out, paths)


def test_bad_files_raise_or_are_skipped_and_kept_skipped(files, tmp_path):
    _, paths = files
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(AudioError, match=str(bad)):
        build_cache([*paths[:3], str(bad)], tmp_path / "c", progress=False, workers=2)
    cache = build_cache([*paths[:3], str(bad)], tmp_path / "c", progress=False, workers=2, on_error="skip")
    assert len(cache) == 3 and len(cache.skipped) == 1 and cache.skipped[0].startswith(str(bad))
    again = build_cache([*paths[:3], str(bad)], tmp_path / "c", progress=False, workers=2, on_error="skip")
    assert again.build_stats.decoded == 0 and len(again.skipped) == 1


def test_one_build_per_folder_and_old_formats_refused(files, tmp_path):
    _, paths = files
    out = tmp_path / "c"
    out.mkdir()
    with open(out / vc.LOCK, "w") as f:
        f.write("4242")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(CacheError, match="another process .pid 4242. is building"):
            build_cache(paths[:2], out, progress=False, workers=1)
    old = tmp_path / "old"
    old.mkdir()
    (old / vc.INDEX).write_text(json.dumps({"paths": [], "offsets": [], "lengths": [], "skipped": []}))
    with pytest.raises(CacheError, match="older version"):
        WavCache(old)
