"""Stop signals of a training run: honoured from the first second, never half-writing a file.

Before training starts (pre-flight check, solver construction, restoring a snapshot) a stop signal raises
Interrupted at once, wherever the process is: every file those stages write is written whole or not at all
(temporary file + rename), and the audio check saves what it checked. A stage that polls the flag between small
steps runs inside `polled()`: there a signal only sets the flag, the stage stops after its current step, and
leaving the block raises Interrupted (the --cache build stops after the file it is on, keeping every decoded
file, with nothing that looks complete). Once training runs, the first signal only sets a flag that the loop
reads between iterations: finish the iteration, write a snapshot, exit 99. A second SIGINT (Ctrl-C twice) raises
Interrupted(abort) wherever the process is, also while that snapshot is being written (Caffe's snapshot files
are each renamed into place, the .solverstate last, so a half-written snapshot is never taken for one). Other
repeated signals are logged and ignored: Grid Engine's -notify sends SIGUSR1 and then SIGUSR2, torchrun's agent
follows a Ctrl-C with SIGTERM, and neither may cut the snapshot short. SIGHUP (the terminal went away) is a stop
signal like SIGTERM.
"""

import logging
import signal
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("train")

EXIT_INTERRUPTED = 99      # stopped by a signal, nothing lost (Grid Engine: "requeue")
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")
ABORT_SIGNAL = "SIGINT"


class Interrupted(BaseException):
    """A stop signal ended work that is not finished first. A BaseException, as KeyboardInterrupt: no
    `except Exception` on the way may swallow it."""

    def __init__(self, signal_name: str, abort: bool):
        super().__init__(signal_name)
        self.signal_name, self.abort = signal_name, abort


class StopRequest:
    """The stop signals' handler for the whole run (a context manager), and what the run has done so far, for
    the line that says so when a signal ends it.

    stage: what the run is doing now ("checking the audio", ...); done: what it finished; training: False
    until the loop starts (a signal raises Interrupted), True after (a signal sets `requested`); writing: the
    snapshot being written (a .solverstate path) or None; last_snapshot: the newest complete snapshot;
    settled: the run's results are written (the stop snapshot, or the final weights): later signals are
    logged and ignored while the process exits."""

    def __init__(self):
        self.signal_name: str | None = None
        self.training = False
        self.stage = "starting"
        self.done: list[str] = []
        self.writing: Path | None = None
        self.last_snapshot: Path | None = None
        self.settled = False
        self.polling = False       # inside polled(): a signal sets the flag, the stage polls it
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def begin(self, stage: str) -> None:
        """The run starts `stage` (the previous one is done)."""
        if self.stage != "starting":
            self.done.append(self.stage)
        self.stage = stage

    @contextmanager
    def polled(self, stage: str):
        """Run `stage`, which polls `requested` between its steps and stops itself when it is set (e.g.
        build_cache's should_stop); a stop signal meanwhile raises Interrupted when the block is left, in place
        of whatever the stopped stage raised. A second Ctrl-C aborts at once, as before training."""
        self.begin(stage)
        self.polling = True
        try:
            yield
        except Interrupted:
            raise
        except BaseException:
            if self.requested:       # what the stage raised when it stopped on the flag
                raise Interrupted(self.signal_name, abort=False) from None
            raise
        finally:
            self.polling = False
        if self.requested:           # stopped after its last step
            raise Interrupted(self.signal_name, abort=False)

    def __enter__(self):
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.settled:
            log.warning("%s received: ignored, the results are written and the process is exiting", name)
        elif self.signal_name is None:
            self.signal_name = name
            if not (self.training or self.polling):
                raise Interrupted(name, abort=False)
            if self.polling:          # the stage says when it stopped
                return
            log.warning("%s received: finishing this iteration, then snapshot and exit", name)
        elif name == ABORT_SIGNAL:
            raise Interrupted(name, abort=True)
        elif self.polling:
            log.warning("%s received again: ignored while %s stops (a second Ctrl-C aborts)", name, self.stage)
        else:
            log.warning("%s received again: ignored until the snapshot is written (exit status %d; a second "
                        "Ctrl-C aborts)", name, EXIT_INTERRUPTED)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_IGN if self.requested else old)

    def explain(self, stop: Interrupted) -> str:
        """The one line that says what the signal ended and what stays valid."""
        if not self.training:
            done = ", ".join(self.done) or "nothing yet"
            return (f"stopped by {stop.signal_name} while {self.stage}, before training (done: {done}); no file "
                    "was left half-written: run the command again (--resume auto continues a run that had "
                    "started training)")
        last = (f"the snapshot {self.last_snapshot.name} stays valid" if self.last_snapshot else
                "no earlier snapshot exists (--resume auto starts from the beginning)")
        if self.writing is not None:
            return (f"second {stop.signal_name}: aborted while writing the snapshot {self.writing.name}, which may "
                    f"be incomplete (--resume auto never takes an incomplete snapshot); {last}")
        return f"second {stop.signal_name}: aborted before the snapshot was written; {last}"
