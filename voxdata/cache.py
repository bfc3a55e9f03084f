"""Decode a dataset once into one memory-mapped int16 file so that loader workers only slice.

Layout of a cache folder:
- `samples.int16`: the recordings back to back, raw little-endian int16, only ever appended to;
- `index.json`: written (atomically) when a build finishes: {"version": 2, "paths", "offsets", "lengths",
  "sources": [[size, mtime_ns, blake2b or null]] (the file each recording was decoded from, as it was then),
  "skipped": [message], "skipped_sources": [[path, size, mtime_ns, message]]};
- `journal.jsonl` while a build runs: one line per decoded (or skipped) file, written after its samples, so a
  build stopped in any way (Ctrl-C, SIGTERM, an exception, a kill -9, a worker killed) keeps every file it
  journaled, and the next build of the same folder continues from there. Every `SYNC_EVERY` files the data
  and the journal are fsync'ed and a sync line written; on resume the entries after the last sync line are
  checked against their CRC-32 (what a power cut may have lost is decoded again), and the data file is cut
  back to the end of the last good entry. Nothing looks complete before index.json exists.
VoxCeleb1 is about 40 GB this way. Keys are the path strings given to build_cache (use the same strings in the
loader).

Validation against the sources: a build reuses a recording only if its file still has the size and
modification time it had when decoded (and, with hash_sources=True, the same BLAKE2b digest when one was
recorded, which catches a file replaced with its old mtime); changed files are decoded again. WavCache.get
refuses (StaleCacheError, one line naming the file) a recording whose file changed since, so a stale cache is
never served silently.

Decoding runs in `workers` processes (started from the forkserver; each exits when its parent dies; a dead
one is an error, never a hang), the parent appends and journals;
progress (tqdm) shows files/s and hours of audio per second, and the build logs both at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, AudioError, read_wav

log = logging.getLogger(__name__)

SAMPLES = "samples.int16"
INDEX = "index.json"
JOURNAL = "journal.jsonl"
LOCK = ".lock"
VERSION = 2
SYNC_EVERY = 256


class CacheError(RuntimeError):
    """An unusable cache folder (no index, an older format, being built by another process); one line."""


class StaleCacheError(AudioError):
    """A cached recording whose file changed since it was decoded (names the file)."""


class _WorkerDied(Exception):
    pass


@dataclass
class _Entry:
    offset: int
    length: int
    stamp: list          # [size, mtime_ns, hash or None] of the source when decoded


def _stamp(path: str, want_hash: bool) -> list:
    st = os.stat(path)
    digest = None
    if want_hash:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return [st.st_size, st.st_mtime_ns, digest]


def _same_source(old: list, new: list) -> bool:
    """Same size and mtime, and the same digest where both have one (a digest recorded now is kept)."""
    return old[0] == new[0] and old[1] == new[1] and (new[2] is None or old[2] is None or old[2] == new[2])


# ---------------------------------------------------------------------- worker side

def _worker(conn) -> None:
    """A decoding process: tasks (path, old stamp, want_hash) in, _decode's tuples out, until the pipe closes
    (the parent closed it, or died: it holds the only other end)."""
    # Ctrl-C and `kill -- -PGID` reach the whole process group: the parent decides, and kills the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            conn.send(_decode(*conn.recv()))
        except (EOFError, OSError):
            return


def _decode(path: str, old_stamp: list | None, want_hash: bool, sample_rate: int = SAMPLE_RATE):
    """-> (path, stamp, samples int16 (n,) or None, crc32, error message or None); samples None and error None
    means the cached recording is still current (only reached with want_hash: the stamps matched before)."""
    try:
        stamp = _stamp(path, want_hash)
    except OSError as e:
        return path, None, None, 0, f"{path}: cannot read ({e.strerror})"
    if old_stamp is not None and _same_source(old_stamp, stamp):
        return path, stamp, None, 0, None
    try:
        x = np.ascontiguousarray(read_wav(path, sample_rate), dtype="<i2")
    except AudioError as e:
        return path, stamp, None, 0, str(e)
    return path, stamp, x, zlib.crc32(memoryview(x).cast("B")), None


# ---------------------------------------------------------------------- the build

class _State:
    """The entries of index.json and of an unfinished build's journal, and the data file's valid end."""

    def __init__(self, cache_dir: str):
        self.dir = cache_dir
        self.entries: dict[str, _Entry] = {}
        self.skipped: dict[str, tuple[list, str]] = {}
        index = os.path.join(cache_dir, INDEX)
        if os.path.exists(index):
            d = _read_index(index)
            for p, o, n, s in zip(d["paths"], d["offsets"], d["lengths"], d["sources"]):
                self.entries[p] = _Entry(o, n, s)
            for p, size, mtime, msg in d.get("skipped_sources", []):
                self.skipped[p] = ([size, mtime, None], msg)
        self.resumed = self._replay(os.path.join(cache_dir, JOURNAL))

    def _replay(self, journal: str) -> int:
        """Apply the journal of a build that did not finish; returns how many decoded files it kept."""
        if not os.path.exists(journal):
            return 0
        data = os.path.join(self.dir, SAMPLES)
        size = os.path.getsize(data) if os.path.exists(data) else 0
        lines = []
        with open(journal, "rb") as f:
            for raw in f:
                try:
                    lines.append(json.loads(raw))
                except ValueError:           # a line cut off by the kill: it and anything after it are lost
                    break
        last_sync = max((i for i, d in enumerate(lines) if "sync" in d), default=-1)
        kept = 0
        with open(data, "rb") if size else contextlib.nullcontext() as f:
            for i, d in enumerate(lines):
                if "skip" in d:
                    self.skipped[d["skip"]] = (d["st"], d["err"])
                    self.entries.pop(d["skip"], None)
                elif "p" in d:
                    if d["o"] + d["n"] > size or (i > last_sync and not _crc_ok(f, d)):
                        continue             # not (completely) on disk: decoded again
                    self.entries[d["p"]] = _Entry(d["o"], d["n"], d["st"])
                    self.skipped.pop(d["p"], None)
                    kept += 1
        return kept

    def end(self) -> int:
        return max((e.offset + e.length for e in self.entries.values()), default=0)


def _crc_ok(f, d: dict) -> bool:
    f.seek(2 * d["o"])
    return zlib.crc32(f.read(2 * d["n"])) == d["crc"]


def _read_index(index: str) -> dict:
    with open(index) as f:
        d = json.load(f)
    if d.get("version") != VERSION or "sources" not in d:
        raise CacheError(f"{index}: a cache written by an older version (no record of its source files, so "
                         "it cannot be checked against them): delete the folder and build it again")
    return d


@contextlib.contextmanager
def _exclusive(cache_dir: str):
    """Only one build per folder at a time (two would append to the same data file)."""
    fd = os.open(os.path.join(cache_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CacheError(f"{cache_dir}: another process (pid {other}) is building this cache") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class _Writer:
    """Appends decoded recordings to the data file and journals them (see the module docstring)."""

    def __init__(self, cache_dir: str, state: _State):
        self.state = state
        data = os.path.join(cache_dir, SAMPLES)
        self.end = state.end()
        self.data = open(data, "r+b" if os.path.exists(data) else "w+b")   # noqa: SIM115 (closed by close())
        self.data.truncate(2 * self.end)       # whatever a stopped build wrote after its last journaled file
        self.data.seek(2 * self.end)
        self.journal = open(os.path.join(cache_dir, JOURNAL), "a")          # noqa: SIM115
        self.unsynced = 0

    def add(self, path: str, stamp: list, x: np.ndarray, crc: int) -> None:
        self.data.write(memoryview(x).cast("B"))
        self.data.flush()                      # the samples reach the OS before the line that vouches for them
        self._line({"p": path, "o": self.end, "n": len(x), "crc": crc, "st": stamp})
        self.state.entries[path] = _Entry(self.end, len(x), stamp)
        self.state.skipped.pop(path, None)
        self.end += len(x)

    def skip(self, path: str, stamp: list | None, message: str) -> None:
        self._line({"skip": path, "st": stamp or [None, None, None], "err": message})
        self.state.skipped[path] = (stamp or [None, None, None], message)
        self.state.entries.pop(path, None)

    def _line(self, d: dict) -> None:
        self.journal.write(json.dumps(d) + "\n")
        self.journal.flush()
        self.unsynced += 1
        if self.unsynced >= SYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.data.fileno())
        self.journal.write(json.dumps({"sync": self.end}) + "\n")
        self.journal.flush()
        os.fsync(self.journal.fileno())
        self.unsynced = 0

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.sync()
        self.data.close()
        self.journal.close()


def _write_index(cache_dir: str, state: _State) -> None:
    paths = sorted(state.entries, key=lambda p: state.entries[p].offset)
    e = [state.entries[p] for p in paths]
    d = {"version": VERSION, "paths": paths, "offsets": [x.offset for x in e], "lengths": [x.length for x in e],
         "sources": [x.stamp for x in e], "skipped": [m for _, m in state.skipped.values()],
         "skipped_sources": [[p, s[0], s[1], m] for p, (s, m) in state.skipped.items()]}
    tmp = os.path.join(cache_dir, INDEX + ".tmp")
    with open(tmp, "w") as f:
        json.dump(d, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(cache_dir, INDEX))
    os.remove(os.path.join(cache_dir, JOURNAL))


@dataclass
class BuildStats:
    """What one build did: files decoded (and their hours of audio), reused, skipped; seconds; workers."""

    decoded: int = 0
    samples: int = 0
    reused: int = 0
    skipped: int = 0
    seconds: float = 0.0
    workers: int = 0

    @property
    def files_per_s(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    @property
    def hours(self) -> float:
        return self.samples / SAMPLE_RATE / 3600

    @property
    def audio_hours_per_s(self) -> float:
        return self.hours / self.seconds if self.seconds > 0 else 0.0

    def describe(self, seconds: float | None = None) -> str:
        if seconds is not None:
            self.seconds = seconds
        return (f"decoded {self.decoded} files ({self.hours:.2f} h of audio) in {self.seconds:.1f} s with "
                f"{self.workers} workers: {self.files_per_s:.1f} files/s, {self.audio_hours_per_s:.3f} h of audio/s")


def build_cache(paths, cache_dir, on_error: str = "raise", progress: bool = True, workers: int | None = None,
                hash_sources: bool = False, should_stop: Callable[[], bool] | None = None,
                on_file: Callable[[int], None] | None = None) -> WavCache:
    """Make cache_dir hold the current samples of every file in `paths` (decoding only what is missing or
    changed; resuming an unfinished build) and return it.

    on_error 'raise' (AudioError naming the file) or 'skip' (bad files are left out, counted, logged and listed
    under "skipped" in index.json). workers: decoding processes (default: the usable cores). hash_sources: compare
    (and record) each file's BLAKE2b digest, which reads every source file once more. should_stop: polled after
    every file; a true value (e.g. the name of the signal that asked) stops the build like an interrupt
    (KeyboardInterrupt, with that name). on_file(n): called
    after the n-th file of this build is journaled (tests use it to kill at a chosen point). Whatever stops the
    build (an exception, Ctrl-C, SIGTERM turned into an exception, a dead worker) terminates the workers at
    once, keeps every journaled file and logs one line saying what was done. The workers start from
    multiprocessing's forkserver, which imports the main script: a script calling build_cache needs the usual
    `if __name__ == "__main__":` guard (ours have it)."""
    from tqdm import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    paths = list(dict.fromkeys(os.fspath(p) for p in paths))
    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    workers = max(1, workers or len(os.sched_getaffinity(0)))
    stats = BuildStats(workers=workers)
    with _exclusive(cache_dir):
        state = _State(cache_dir)
        todo, changed = _plan(paths, state, hash_sources, stats)
        if changed:
            log.warning("cache %s: %d recordings changed since they were decoded (first: %s); decoding them again",
                        cache_dir, len(changed), changed[0])
        if state.resumed:
            log.info("cache %s: continuing an unfinished build (%d files already decoded)", cache_dir, state.resumed)
        if not todo and not os.path.exists(os.path.join(cache_dir, JOURNAL)) and \
                os.path.exists(os.path.join(cache_dir, INDEX)):
            return WavCache(cache_dir, build_stats=stats)
        writer = _Writer(cache_dir, state)
        pool = _Pool(min(workers, len(todo))) if todo else None
        t0 = time.perf_counter()               # the decode rate, without the workers' start (~1 s, once)
        bar = tqdm(total=len(todo), desc="cache: decode", unit="file", disable=not progress)
        try:
            if pool is not None:
                _run(pool, todo, state, writer, stats, bar, on_error, hash_sources, should_stop, on_file)
        except _WorkerDied:
            raise CacheError(f"cache {cache_dir}: a decoding worker died (killed, or out of memory) after "
                             f"{stats.decoded + stats.skipped} of {len(todo)} files; every decoded file is kept: "
                             "build again to continue") from None
        except BaseException as exc:
            log.warning("cache %s: stopped (%s) after %d of %d files to decode (%s); every decoded file is kept: "
                        "build again to continue", cache_dir, _why(exc), stats.decoded + stats.skipped, len(todo),
                        stats.describe(time.perf_counter() - t0))
            raise
        finally:
            if pool is not None:
                pool.close()
            stats.seconds = time.perf_counter() - t0
            writer.close()
            bar.close()
        _write_index(cache_dir, state)
    if todo:
        log.info("cache %s: %s; %d reused, %d skipped", cache_dir, stats.describe(), stats.reused,
                 len(state.skipped))
    if state.skipped:
        first = next(iter(state.skipped.values()))[1]
        log.warning("cache: %d unusable files left out (listed in %s); first: %s", len(state.skipped),
                    os.path.join(cache_dir, INDEX), first)
    return WavCache(cache_dir, build_stats=stats)


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted"
    return f"{type(exc).__name__}: {exc}"


def _plan(paths: list[str], state: _State, want_hash: bool, stats: BuildStats):
    """(todo: [(path, stamp to compare in the worker or None)], changed paths)."""
    todo, changed = [], []
    for p in paths:
        old, bad = state.entries.get(p), state.skipped.get(p)
        try:
            now = _stamp(p, False)
        except OSError:
            now = None
        if old is not None and now is not None and _same_source(old.stamp, now):
            if want_hash:
                todo.append((p, old.stamp))          # the worker hashes it and decodes it only if it differs
            else:
                stats.reused += 1
            continue
        if bad is not None and now is not None and bad[0][:2] == now[:2]:
            stats.reused += 1                        # known bad and unchanged: skipped again without decoding
            continue
        if old is not None:
            changed.append(p)
        todo.append((p, None))
    return todo, changed


class _Pool:
    """`n` decoding processes, each with its own pipe and up to 2 tasks in flight. A worker that dies (even in
    the middle of sending a result) is an EOF or a broken pipe, never a hang; close() kills them all at once
    and reaps them. (concurrent.futures' pool can hang in shutdown when a worker is killed mid-send.) They
    start from the forkserver, not by forking this process: a fork would inherit its threads' locks and its
    garbage, which a child's GC may free (ffmpeg objects whose thread pools do not exist there: a deadlock)."""

    NAME = "voxdata-cache-worker"

    def __init__(self, n: int):
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
        self.workers = []
        try:
            for _ in range(n):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(theirs,), daemon=True, name=self.NAME)
                proc.start()
                theirs.close()                 # only the worker holds its end: its death is our EOF
                self.workers.append((proc, mine))
        except BaseException:
            self.close()
            raise

    def map(self, tasks) -> Iterator[tuple]:
        """_decode's results for `tasks` (in completion order)."""
        from multiprocessing.connection import wait

        tasks = iter(tasks)
        busy: dict = {}
        try:
            for _, conn in self.workers:
                for task in [t for t in (next(tasks, None), next(tasks, None)) if t is not None]:
                    conn.send(task)
                    busy[conn] = busy.get(conn, 0) + 1
            while busy:
                for conn in wait(list(busy)):
                    result = conn.recv()
                    busy[conn] -= 1
                    task = next(tasks, None)
                    if task is not None:
                        conn.send(task)
                        busy[conn] += 1
                    if not busy[conn]:
                        del busy[conn]
                    yield result
        except (EOFError, OSError):          # a worker's end closed: it died
            raise _WorkerDied() from None

    def close(self) -> None:
        for proc, _ in self.workers:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                proc.kill()
        for proc, conn in self.workers:
            proc.join()
            conn.close()
        self.workers = []


def _run(pool, todo, state, writer, stats, bar, on_error, want_hash, should_stop, on_file) -> None:
    results = pool.map((path, old, want_hash) for path, old in todo)
    for done, (path, stamp, x, crc, error) in enumerate(results, start=1):
        if error is not None:
            if on_error == "raise":
                raise AudioError(error)
            writer.skip(path, stamp, error)
            stats.skipped += 1
        elif x is None:
            stats.reused += 1
            state.entries[path].stamp = stamp          # with the digest of this build
        else:
            writer.add(path, stamp, x, crc)
            stats.decoded += 1
            stats.samples += len(x)
        bar.update(1)
        elapsed = bar.format_dict.get("elapsed") or 0
        if elapsed > 0:
            bar.set_postfix(audio_h_s=f"{stats.samples / SAMPLE_RATE / 3600 / elapsed:.3f}", refresh=False)
        if on_file is not None:
            on_file(done)
        stop = should_stop() if should_stop is not None else None
        if stop:
            raise KeyboardInterrupt(stop if isinstance(stop, str) else "stop requested")


# ---------------------------------------------------------------------- the read side

class WavCache:
    """Read side of a cache. get(path) -> int16 (n,) view into the memory map (opened lazily, so the object
    pickles small into worker processes). The first get of a path in a process checks that its file has the
    size and modification time it had when decoded (StaleCacheError otherwise)."""

    def __init__(self, cache_dir, build_stats: BuildStats | None = None):
        self.cache_dir = os.fspath(cache_dir)
        self.build_stats = build_stats
        index = os.path.join(self.cache_dir, INDEX)
        if not os.path.exists(index):
            unfinished = os.path.exists(os.path.join(self.cache_dir, JOURNAL))
            raise CacheError(f"{index}: no cache index" + (" (its build did not finish: run it again to continue)"
                                                           if unfinished else " (build it with data_utils.py cache)"))
        d = _read_index(index)
        self.skipped = d.get("skipped", [])
        self._where = {p: (o, n) for p, o, n in zip(d["paths"], d["offsets"], d["lengths"])}
        self._stamps = {p: s for p, s in zip(d["paths"], d["sources"])}
        self._checked: set[str] = set()
        self._mm = None

    def __contains__(self, path) -> bool:
        return os.fspath(path) in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None  # never pickle the mapped data itself
        return state

    def stale(self, paths) -> list[str]:
        """One message per path (of those in the cache) whose file changed since it was decoded."""
        out = []
        for p in map(os.fspath, paths):
            if p in self._stamps:
                problem = self._compare(p)
                if problem:
                    out.append(problem)
        return out

    def _compare(self, path: str) -> str | None:
        old = self._stamps[path]
        try:
            st = os.stat(path)
        except OSError as e:
            return f"{path}: cached in {self.cache_dir} but its file cannot be read now ({e.strerror})"
        if st.st_size != old[0] or st.st_mtime_ns != old[1]:
            return (f"{path}: changed since it was decoded into {self.cache_dir} (size {old[0]} -> {st.st_size} "
                    "bytes or a new modification time): build the cache again (data_utils.py cache) or drop --cache")
        return None

    def get(self, path) -> np.ndarray:
        path = os.fspath(path)
        try:
            off, n = self._where[path]
        except KeyError:
            raise AudioError(f"{path}: not in the cache {self.cache_dir}") from None
        if path not in self._checked:
            problem = self._compare(path)
            if problem:
                raise StaleCacheError(problem)
            self._checked.add(path)
        if self._mm is None:
            self._mm = np.memmap(os.path.join(self.cache_dir, SAMPLES), dtype="<i2", mode="r")
        return self._mm[off : off + n]
