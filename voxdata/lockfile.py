"""An exclusive lock on a file, shared by processes: the first holds it, the others wait for it (no timeout:
they wait exactly as long as the work takes). The kernel releases it when its holder dies, however it dies."""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def exclusive(lock_path, doing: str):
    """Hold an exclusive flock() on `lock_path` (created if needed) for the block. `doing` says what the holder
    does ("checking audio files into X"), for the line logged while waiting for another process. Where the
    lock file cannot be created (a read-only folder), the block runs without it, with a warning."""
    fd = None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        log.warning("cannot create the lock file %s (%s); %s without it", lock_path, e.strerror or e, doing)
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process that is %s (lock %s)", doing, lock_path)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)
