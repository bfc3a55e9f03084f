"""Caffe's glog-style log lines for scripts that use caffe_torch directly, as pycaffe prints them.

A pycaffe script sees Caffe's log on stderr without configuring anything:

    I1203 18:26:13.286015 12345 solver.py:310] Iteration 100, loss = 2.31

(level letter, month and day, time to the microsecond, thread id, file:line, then the message), filtered by
the environment variable GLOG_minloglevel (0 = INFO and up, the default; 1 = WARNING; 2 = ERROR; 3 = nothing),
read when a line is logged. caffe_torch logs through Python's `logging` (logger "caffe_torch" and its
children); `install()` (called when a Net or Solver is made) gives that logger a handler that writes these
lines *only while the application has configured no logging of its own* (the root logger has no handler).
Once it has (the project's scripts do), records reach the application's handlers exactly as plain
propagation would deliver them, so those scripts keep their own format and levels.
"""

import datetime
import logging
import os
import sys
import threading

_LOGGER = "caffe_torch"
# glog severities 0..3 (INFO, WARNING, ERROR, FATAL); 3 and above: nothing of ours is shown
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}


def glog_min_level(environ=os.environ) -> int:
    """The Python logging level GLOG_minloglevel asks for (above CRITICAL for 3: nothing)."""
    text = environ.get("GLOG_minloglevel", "0").strip() or "0"
    try:
        value = int(text)
    except ValueError:
        return logging.INFO                     # glog ignores a malformed value too
    return _GLOG_LEVELS.get(max(value, 0), logging.CRITICAL + 1)


class GlogFormatter(logging.Formatter):
    """`Lmmdd hh:mm:ss.uuuuuu tid file:line] message`, as glog's default prefix."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created)
        letter = record.levelname[:1] if record.levelname else "I"
        prefix = f"{letter}{when:%m%d %H:%M:%S}.{when.microsecond:06d} {threading.get_native_id():>5} " \
                 f"{record.filename}:{record.lineno}] "
        text = prefix + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _application_logs() -> bool:
    return bool(logging.getLogger().handlers)


def _level_without_ours(name: str) -> int:
    """The level the logger `name` would have if `install` had not set one on "caffe_torch"."""
    logger = logging.getLogger(name)
    while logger is not None:
        ours = logger.name == _LOGGER and getattr(logger, "_glog_level", None) == logger.level
        if logger.level and not ours:
            return logger.level
        logger = logger.parent
    return logging.WARNING


def _to_root_handlers(record: logging.LogRecord) -> None:
    """Deliver as propagation would: the root logger's handlers, except those the record has already met on
    its way up (a tool may hang the same handler on a non-propagating logger, as pytest does)."""
    root = logging.getLogger()
    if root.disabled or not root.filter(record):
        return
    seen = set()
    logger = logging.getLogger(record.name)
    while logger is not None and logger is not root:
        seen.update(map(id, logger.handlers))
        logger = logger.parent
    for handler in root.handlers:
        if id(handler) not in seen and record.levelno >= handler.level:
            handler.handle(record)


class _GlogHandler(logging.StreamHandler):
    """The "caffe_torch" logger's handler (the logger does not propagate; this handler decides). Without the
    application's logging: glog lines on the current sys.stderr, as GLOG_minloglevel allows. With it: the
    record goes to the root logger's handlers exactly when plain propagation would have sent it there."""

    def __init__(self):
        super().__init__()
        self.setFormatter(GlogFormatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; we always use the current sys.stderr
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if _application_logs():
            if record.levelno >= _level_without_ours(record.name):
                _to_root_handlers(record)
        elif record.levelno >= glog_min_level():
            super().emit(record)


def install() -> None:
    """Give the "caffe_torch" logger the glog handler (once; later calls do nothing). Its level is set to
    DEBUG so that the handler decides, unless the application set one itself."""
    logger = logging.getLogger(_LOGGER)
    if any(isinstance(h, _GlogHandler) for h in logger.handlers):
        return
    logger.addHandler(_GlogHandler())
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.DEBUG)
        logger._glog_level = logging.DEBUG
