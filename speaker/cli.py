"""How the evaluation scripts end when their work stops early, written once for test_identification.py and
test_verification.py: a user's mistake (an argument, a list, a weights file, a read-only or full disk, a
missing engine or GPU) is one line on stderr, exit status 1 (argparse's usage errors are 2); Ctrl-C is one
line saying what was kept, exit status 130; never a traceback. (Training has its own, with snapshots:
speaker/train.py.)"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import TrainingError

EXIT_ERROR = 1             # as training's errors; 2 is argparse's usage error
EXIT_INTERRUPTED = 130      # 128 + SIGINT, what a shell reports for a Ctrl-C


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, KeyError, OSError, TrainingError]
    engine_errors = sys.modules.get("caffe_torch.errors")   # not imported: no engine ran, none was raised
    if engine_errors is not None:
        errors.append(engine_errors.CaffeError)
    return tuple(errors)


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line (a KeyError's without the quotes repr() adds)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def run_script(prog: str, work: Callable[[], object]) -> int:
    """Run `work()`; 0 when it returns, else the one-line report on stderr and its exit status."""
    try:
        work()
    except KeyboardInterrupt as exc:
        detail = f": {one_line(exc)}" if str(exc) else ""     # e.g. where the finished part was kept
        print(f"{prog}: interrupted (Ctrl-C){detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return 0
