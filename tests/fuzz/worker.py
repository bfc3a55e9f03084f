"""Engine workers: one long-lived subprocess per engine that runs fuzz cases, so that a Caffe CHECK-abort (which
kills the process) is a result, not a crash of the fuzzer.

    python -m tests.fuzz.worker caffe|torch|torch64 SCRATCH_FOLDER

`caffe` imports the real pycaffe build; `torch` binds `import caffe` to caffe_torch (as `python -m caffe_torch`
does, so Python layers' `import caffe` gets it too); `torch64` is caffe_torch in float64, the reference that tells
float32 rounding from a divergence (compare.py). Both use one thread (OpenBLAS, torch): results must not depend on
the machine's load, and a shared 2-core machine runs fastest that way.

Protocol: length-prefixed pickles. The parent sends a Program (as its JSON + net text); the worker answers
("stage", name, observations) after each stage, then ("done",), or ("error", type, message) when the engine raised.
The `caffe` worker imports pycaffe once and runs each case in a forked child, so that a Caffe CHECK-abort costs a
fork, not a new interpreter (starting one took ~2-8 s on a loaded 2-core machine, most of a run's time when a third
of the cases abort), and no case sees what an earlier one left in the process: when the child dies the worker
answers ("abort", exit status) and the parent reads the fatal message from the worker's stderr (a file). A worker
that dies itself is started again.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("caffe", "torch", "torch64")
# A case that gives no answer for this long is reported as a hang (the fuzz nets are tiny: a case takes well under
# a second; this is only the guard against a deadlock, never a tolerance).
HANG_SECONDS = 600.0


def _send(stream, obj) -> None:
    data = memoryview(struct.pack("<Q", len(obj := pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))) + obj)
    while data:
        data = data[stream.write(data):]
    stream.flush()


def _read_exact(stream, n: int) -> bytes | None:
    """n bytes from an unbuffered stream (the parent selects on the pipe: no read-ahead may hide a message)."""
    parts = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _recv(stream):
    head = _read_exact(stream, 8)
    if head is None:
        return None
    data = _read_exact(stream, struct.unpack("<Q", head)[0])
    return None if data is None else pickle.loads(data)


def import_engine(engine: str):
    """`caffe` for the worker: the real pycaffe, or caffe_torch bound to the name `caffe`."""
    if engine == "caffe":
        import caffe
    else:
        import torch

        from caffe_torch.__main__ import install_alias

        torch.set_num_threads(1)
        install_alias()
        import caffe
    caffe.set_mode_cpu()
    return caffe


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    engine = argv[0]
    # the protocol on a private copy of stdout; C++ code printing to stdout must not break it
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    caffe = import_engine(engine)
    net_kwargs = {}
    if engine == "torch64":
        import torch

        net_kwargs = {"dtype": torch.float64}
    from .program import Program
    from .rounding import RoundingNoise
    from .script import run_program

    base = Path(argv[1])                 # the parent's folder: it removes it even when this process aborts

    def run_case(net_text, meta, workdir):
        try:
            prog = Program.from_files(net_text, meta)
            # the float64 referee with float32's rounding simulated (compare.py)
            simulated = engine == "torch64" and prog.perturb
            noise = RoundingNoise(prog.perturb, [prog.seed, prog.rounding_draw]) if simulated else \
                contextlib.nullcontext()
            with noise:
                run_program(caffe, prog, workdir, lambda stage, obs: _send(proto_out, ("stage", stage, obs)),
                            net_kwargs)
        except Exception as exc:  # noqa: BLE001  (every engine error is a result to compare)
            _send(proto_out, ("error", type(exc).__name__, str(exc), traceback.format_exc(limit=-3)))
        else:
            _send(proto_out, ("done",))

    n = 0
    while True:
        msg = _recv(proto_in)
        if msg is None:
            break
        n += 1
        workdir = base / f"case{n}"
        print(f"@@case {n}", file=sys.stderr, flush=True)
        try:
            if engine == "caffe":
                status = _in_child(run_case, *msg, workdir)
                if status:
                    _send(proto_out, ("abort", status))
            else:
                run_case(*msg, workdir)
        finally:
            os.chdir(base)
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _in_child(fn, *args) -> int:
    """Run fn(*args) in a forked child; its exit status as os.waitstatus_to_exitcode gives it (0 when fn
    returned, -6 for a glog FATAL's abort)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        finally:
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@dataclass
class EngineResult:
    """What one engine did with a case: the stages it completed (with their observations), and how it ended:
    "done", "error" (an exception: `message`), "abort" (the process died: Caffe's fatal message), "hang"."""

    stages: list[str] = field(default_factory=list)
    obs: dict = field(default_factory=dict)
    end: str = "done"
    error_type: str = ""
    message: str = ""
    detail: str = ""


def fatal_message(stderr_text: str) -> str:
    """The glog FATAL line (`F1207 02:03:04.567 123 file.cpp:45] Check failed: ...`), or the last line."""
    lines = [ln for ln in stderr_text.splitlines() if ln.strip() and not ln.startswith("@@case")]
    for ln in lines:
        if len(ln) > 5 and ln[0] == "F" and ln[1:5].isdigit() and "]" in ln:
            return ln.split("] ", 1)[1] if "] " in ln else ln
    for ln in lines:
        if "Error" in ln or "error" in ln:
            return ln
    return lines[-1] if lines else "(no message)"


class Worker:
    """A worker subprocess for one engine, restarted after it dies."""

    def __init__(self, engine: str, log_dir: Path, first_on_path: str | None = None):
        self.engine = engine
        self.log_dir = log_dir
        self.first_on_path = first_on_path      # a folder searched before the project (another caffe_torch)
        self.proc = None
        self.workdir = None     # the worker's scratch folder, made and removed here: an abort cannot leak it
        self.cases = 0

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr = open(self.log_dir / f"{self.engine}-{os.getpid()}-{id(self)}.log", "a+b")  # noqa: SIM115
        env = dict(os.environ, GLOG_minloglevel="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
                       p for p in (self.first_on_path, str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.workdir = tempfile.mkdtemp(prefix=f"fuzz-{self.engine}-")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker", self.engine, self.workdir],
                                     cwd=self.first_on_path or ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0,
                                     start_new_session=True)   # its own process group: a hang kills its child too

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._ended()
            self.stderr.close()

    def _ended(self) -> None:
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _read(self, deadline_s: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline_s)
        if not ready:
            return "hang"
        return _recv(self.proc.stdout)

    def run(self, net_text: str, meta: str) -> EngineResult:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.stderr.seek(0, os.SEEK_END)
        offset = self.stderr.tell()
        res = EngineResult()
        with contextlib.suppress(BrokenPipeError, OSError):
            _send(self.proc.stdin, (net_text, meta))
        while True:
            msg = self._read(HANG_SECONDS)
            if msg == "hang":
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                res.end, res.message = "hang", f"no answer in {HANG_SECONDS:.0f} s"
                self._ended()
                return res
            if msg is None or msg[0] == "abort":  # Caffe's CHECK / LOG(FATAL) (or a crash) ended the case
                if msg is None:                          # ... and the worker itself: start another next time
                    self.proc.wait()
                    code = self.proc.returncode
                    self._ended()
                else:
                    code = msg[1]
                self.stderr.flush()
                self.stderr.seek(offset)
                res.end = "abort"
                res.message = fatal_message(self.stderr.read().decode(errors="replace"))
                res.detail = f"exit {code}"
                return res
            if msg[0] == "stage":
                res.stages.append(msg[1])
                res.obs.update({f"{msg[1]}/{k}": v for k, v in msg[2].items()})
            elif msg[0] == "error":
                res.end, res.error_type, res.message, res.detail = "error", msg[1], msg[2], msg[3]
                return res
            else:
                self.cases += 1
                return res


if __name__ == "__main__":
    sys.exit(main())
