"""Pre-flight check of a list of recordings: every file's header and length, once, before a long run.

A bad file found by the loader at iteration 9 of 61,600 stops a run (or is silently never drawn in a short
one); so the trainer and the test scripts check every file they will read first and report all problems at
once. Headers are read in threads (libsndfile releases the GIL). Results are cached in a JSON file keyed by
absolute path and validated by size and modification time, so a resumed run, the next stage or the test
scripts redo nothing for files that did not change.

Cache file layout: {"version": 1, "files": {abs path: [size, mtime_ns, samples or null, error or null]}}.
Processes sharing a cache take turns: a scan holds an exclusive lock (flock on <cache>.lock) from reading the
cache to writing it back (by atomic rename), so a second process (another rank of a data-parallel launch, the
next stage started beside this one) waits for the first and then reuses its results instead of redoing them
or overwriting them with its own. An interrupted scan (a stop signal) saves what it checked before it stops.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .audio import SAMPLE_RATE, AudioError, wav_info
from .lockfile import exclusive

log = logging.getLogger(__name__)

CACHE_NAME = ".audio_check.json"   # the default cache file name (in the folder above a run directory)
_VERSION = 1


@dataclass
class ScanResult:
    """good: the usable paths (input order); bad: one message per unusable file, naming it; reused: how many
    results came from the cache."""

    good: list[str]
    bad: list[str]
    reused: int = 0
    samples: dict[str, int] = field(default_factory=dict)


def _check_one(path: str, sample_rate: int, min_samples: int) -> tuple[int | None, str | None]:
    try:
        n = wav_info(path, sample_rate)
    except AudioError as e:
        return None, str(e)
    if n < min_samples:
        return n, f"{path}: {n} samples, shorter than the {min_samples} this run needs"
    return n, None


def _load_cache(cache_file) -> dict:
    if cache_file is None or not os.path.exists(cache_file):
        return {}
    try:
        with open(cache_file) as f:
            d = json.load(f)
        if d.get("version") == _VERSION and isinstance(d.get("files"), dict):
            return d["files"]
    except (OSError, ValueError, AttributeError) as e:
        log.warning("audio check cache %s is unreadable (%s); checking every file again", cache_file, e)
    return {}


def _save_cache(cache_file, files: dict) -> None:
    tmp = f"{cache_file}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({"version": _VERSION, "files": files}, f)
        os.replace(tmp, cache_file)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, OSError):
            raise
        # the cache only saves time: a read-only folder must not stop a run
        log.warning("could not write the audio check cache %s: %s", cache_file, e)


def scan_audio(paths, sample_rate: int = SAMPLE_RATE, progress: bool = False, cache_file=None,
               min_samples: int = 1, workers: int = 8) -> ScanResult:
    """Check every file's header (rate, channels, length >= min_samples, truncation) without decoding.

    Returns a ScanResult; the caller decides whether to stop or to skip the bad files (and reports the
    count). cache_file: JSON cache of earlier checks (see the module docstring); None = no cache.
    A missing file is a bad file ("no such file"). Files are checked in `workers` threads.
    """
    paths = [os.fspath(p) for p in paths]
    if cache_file is None:
        return _scan(paths, sample_rate, progress, cache_file, min_samples, workers)
    with exclusive(f"{cache_file}.lock", f"checking audio files into {cache_file}"):
        return _scan(paths, sample_rate, progress, cache_file, min_samples, workers)


def _scan(paths, sample_rate, progress, cache_file, min_samples, workers) -> ScanResult:
    from tqdm import tqdm

    cached = _load_cache(cache_file)
    results: dict[str, tuple[int | None, str | None]] = {}
    todo: list[tuple[str, str, int, int]] = []   # (path, absolute path, size, mtime_ns)
    reused = 0
    for p in dict.fromkeys(paths):
        key = os.path.abspath(p)
        try:
            st = os.stat(p)
        except OSError as e:
            results[p] = (None, f"{p}: cannot read ({e.strerror})")
            continue
        hit = cached.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            n, err = hit[2], hit[3]
            results[p] = (n, err) if err or n is None or n >= min_samples else \
                (n, f"{p}: {n} samples, shorter than the {min_samples} this run needs")
            reused += 1
        else:
            todo.append((p, key, st.st_size, st.st_mtime_ns))
    if todo:
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        done = 0
        try:
            checked = pool.map(lambda t: _check_one(t[0], sample_rate, 1), todo)
            for (p, key, size, mtime), (n, err) in tqdm(zip(todo, checked), total=len(todo),
                                                        desc="audio check", unit="file", disable=not progress):
                cached[key] = [size, mtime, n, err]     # cached without the run-specific length rule
                if err is None and n < min_samples:
                    err = f"{p}: {n} samples, shorter than the {min_samples} this run needs"
                results[p] = (n, err)
                done += 1
        except BaseException:       # a stop signal (or an error): keep what was checked for the next start
            pool.shutdown(wait=True, cancel_futures=True)
            log.warning("audio check stopped after %d of %d files%s", done, len(todo),
                        f"; their results are saved in {cache_file}" if cache_file is not None else "")
            if cache_file is not None:
                _save_cache(cache_file, cached)
            raise
        pool.shutdown()
        if cache_file is not None:
            _save_cache(cache_file, cached)
    good = [p for p in paths if results[p][1] is None]
    bad = list(dict.fromkeys(results[p][1] for p in paths if results[p][1] is not None))
    samples = {p: results[p][0] for p in good}
    if bad:
        log.warning("%d of %d audio files are unusable; first: %s", len(bad), len(set(paths)), bad[0])
    return ScanResult(good, bad, reused, samples)


def default_cache_file(run_dir) -> str:
    """The cache file of a run directory: CACHE_NAME in the folder above it, so the runs of one project
    (stage 1, stage 2, their tests: runs/softmax, runs/lm, ...) share it."""
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(run_dir))), CACHE_NAME)
