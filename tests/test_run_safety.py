"""Run directories that no crash, signal or second process can corrupt (issue 20): one test per way the issue
found to lose or mix work. Processes are stopped or killed at events (tests/hooked_run.py), never after a time."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_e2e import SOFTMAX_HEAD, params_of, train_args, write_solver

import trainAug

ROOT = Path(__file__).resolve().parent.parent
DROPOUT_HEAD = """
layer {{ name: "drop5" type: "Dropout" bottom: "fc5" top: "fc5" dropout_param {{ dropout_ratio: 0.5 }} }}
""" + SOFTMAX_HEAD
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture
def signals():
    """The signal handlers as they were (a stopped run leaves its signals ignored while it exits)."""
    saved = {s: signal.getsignal(s) for s in HANDLED}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def same_weights(a: Path, b: Path) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        for x, y in zip(pa[name], pb[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error: " in line]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def trainer(*args, at: str | None = None, **kw) -> subprocess.Popen:
    """trainAug.py in another process (tests/hooked_run.py: --at KIND:K:ACTION acts on it at an event)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    hook = ["--at", at] if at else []
    return subprocess.Popen([sys.executable, "-m", "tests.hooked_run", *hook, "--", *map(str, args)], cwd=ROOT,
                            env=env, text=True, **kw)


# ---------------------------------------------------------------- snapshots refer to their own weights

def test_a_run_moved_aside_by_force_resumes_with_its_own_weights(corpus, tmp_path, capsys):
    """Each .solverstate names its .caffemodel by an absolute path: after --force moved run/ to run.old-1 and a
    new run of another net took run/, resuming run.old-1 must take run.old-1's weights (and check those)."""
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "p", max_iter=4, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    uninterrupted = (run / "final.caffemodel").read_bytes()
    # another net in run/ (fc6 renamed: a resume that looked there would also find layers missing)
    other = write_solver(tmp_path, SOFTMAX_HEAD.replace('"fc6"', '"fc6b"'), "p", max_iter=4, snapshot=2, name="o")
    assert trainAug.main(train_args(other, corpus, run, "--force", "--seed", "9")) == 0
    old = tmp_path / "run.old-1"
    from caffe_torch.weights import read_solverstate

    assert read_solverstate(old / "snapshots" / "p_iter_2.solverstate").learned_net.startswith(str(run))
    capsys.readouterr()
    status = trainAug.main(train_args(solver, corpus, old, "--resume", str(old / "snapshots" / "p_iter_2.solverstate")))
    assert status == 0, capsys.readouterr().err
    assert (old / "final.caffemodel").read_bytes() == uninterrupted


def test_restore_takes_the_caffemodel_beside_the_state_and_checks_its_digest(tmp_path):
    """Solver.restore: the .caffemodel beside the .solverstate, whatever folder learned_net names, and only the
    one that state was written with (a digest mismatch is a named error, nothing changed)."""
    import caffe_torch as caffe
    from caffe_torch.errors import WeightsError

    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } '
                   'shape { dim: 4 } } }\nlayer { name: "ip" type: "InnerProduct" bottom: "x" top: "z" '
                   'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }\n'
                   'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }\n')

    def solver(folder: Path, seed: int):
        folder.mkdir(exist_ok=True)
        path = folder / "solver.prototxt"
        path.write_text(f'net: "{net}"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 9\n'
                        f'snapshot_prefix: "{folder / "s"}"\nsolver_mode: CPU\n')
        caffe.set_random_seed(seed)
        s = caffe.SGDSolver(str(path))
        s.net.blobs["x"].data[...] = np.arange(12).reshape(4, 3) / 12
        s.net.blobs["y"].data[...] = [0, 1, 1, 0]
        return s

    a, b = solver(tmp_path / "a", 1), solver(tmp_path / "b", 2)
    for s in (a, b):
        s.step(2)
        s.snapshot()
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("s_iter_2.caffemodel", "s_iter_2.solverstate"):
        os.replace(tmp_path / "a" / name, moved / name)
    # a's state names tmp_path/a/s_iter_2.caffemodel; put b's weights there: restore must not take them
    (tmp_path / "a" / "s_iter_2.caffemodel").write_bytes((tmp_path / "b" / "s_iter_2.caffemodel").read_bytes())
    r = solver(tmp_path / "r", 3)
    r.restore(moved / "s_iter_2.solverstate")
    np.testing.assert_array_equal(r.net.params["ip"][0].data, a.net.params["ip"][0].data)
    assert not np.array_equal(a.net.params["ip"][0].data, b.net.params["ip"][0].data)

    # a .caffemodel beside the state that is not the one it was written with (another snapshot's)
    (moved / "s_iter_2.caffemodel").write_bytes((tmp_path / "b" / "s_iter_2.caffemodel").read_bytes())
    fresh = solver(tmp_path / "f", 4)
    before = fresh.net.params["ip"][0].data.copy()
    with pytest.raises(WeightsError, match="s_iter_2.caffemodel is not the .caffemodel s_iter_2.solverstate"):
        fresh.restore(moved / "s_iter_2.solverstate")
    np.testing.assert_array_equal(fresh.net.params["ip"][0].data, before)
    assert fresh.iter == 0
    (moved / "s_iter_2.caffemodel").unlink()
    with pytest.raises(WeightsError, match="weights .*s_iter_2.caffemodel are missing"):
        fresh.restore(moved / "s_iter_2.solverstate")


@pytest.mark.caffe
def test_real_caffe_snapshots_restore_with_their_own_weights(corpus, tmp_path, capsys):
    """What real Caffe writes (no digest, learned_net as its snapshot_prefix made it) restores in caffe_torch
    from the .caffemodel beside it; and a --engine caffe run moved aside by --force resumes with its own
    weights (real Caffe reads learned_net as written: the trainer hands it a copy naming the right file)."""
    from speaker.engine import try_import_pycaffe

    caffe, why = try_import_pycaffe()
    if caffe is None:
        pytest.skip(f"no pycaffe: {why}")
    import caffe_torch
    from caffe_torch.weights import read_solverstate

    solver = write_solver(tmp_path, SOFTMAX_HEAD, "rc", max_iter=4, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run, "--engine", "caffe")) == 0
    uninterrupted = (run / "final.caffemodel").read_bytes()
    state = run / "snapshots" / "rc_iter_2.solverstate"
    written = read_solverstate(state)
    assert [f.name for f, _ in written.ListFields()] == ["iter", "learned_net", "history", "current_step"]
    assert Path(written.learned_net).is_absolute()
    ours = caffe_torch.get_solver(str(run / "solver.prototxt"))
    ours.restore(state)
    assert ours.iter == 2
    want = params_of(state.with_suffix(".caffemodel"))
    for name, blobs in want.items():
        for got, expected in zip(ours.net.params[name], blobs):
            np.testing.assert_array_equal(got.data, expected)
    # and back: a caffe_torch snapshot (with its digest field, which Caffe skips) restores in real Caffe
    ours.param.snapshot_prefix = str(tmp_path / "ours" / "rc")
    ours.snapshot()
    theirs = caffe.get_solver(str(run / "solver.prototxt"))
    theirs.restore(str(tmp_path / "ours" / "rc_iter_2.solverstate"))
    assert theirs.iter == 2
    for name, blobs in want.items():
        for got, expected in zip(theirs.net.params[name], blobs):
            np.testing.assert_array_equal(got.data, expected)

    other = write_solver(tmp_path, SOFTMAX_HEAD, "rc", max_iter=4, snapshot=2, name="o")
    assert trainAug.main(train_args(other, corpus, run, "--engine", "caffe", "--force", "--seed", "9")) == 0
    old = tmp_path / "run.old-1"
    capsys.readouterr()
    status = trainAug.main(train_args(solver, corpus, old, "--engine", "caffe", "--resume",
                                      str(old / "snapshots" / "rc_iter_2.solverstate")))
    assert status == 0, capsys.readouterr().err
    assert (old / "final.caffemodel").read_bytes() == uninterrupted


# ---------------------------------------------------------------- one process per run directory

def test_a_second_process_on_a_run_in_use_exits_2_naming_it_and_a_dead_holder_frees_it(corpus, tmp_path, capsys):
    """The first trainer freezes itself (SIGSTOP) at its 3rd step, holding the run; a --resume auto start (a
    requeued job while the old one still runs) is refused with status 2 and who holds the run; once the first
    is killed (kill -9), the kernel has released its lock and the run continues."""
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "busy", max_iter=40, snapshot=2)
    run = tmp_path / "run"
    first = trainer(*train_args(solver, corpus, run), at="step:3:stop", stderr=subprocess.DEVNULL)
    try:
        assert os.waitpid(first.pid, os.WUNTRACED)[1] and first.poll() is None     # stopped, not exited
        assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {first.pid} on " in err and len(error_lines(err)) == 1
        assert not (run / "snapshots" / "busy_iter_4.solverstate").exists()     # the second trained nothing
    finally:
        first.kill()
        first.wait()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    assert "resuming from" in (run / "train.log").read_text()


def test_two_force_starts_at_once_move_the_old_run_aside_once(corpus, tmp_path, monkeypatch):
    """--force's move is not check-then-act: another --force start that comes while this one moves the old run
    aside is refused (the run is locked) instead of moving it first and making this one fail half-way."""
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "f", max_iter=2, snapshot=0)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    original = (run / "final.caffemodel").read_bytes()
    other = {}
    real_replace = os.replace

    def replace(src, dst, **kw):
        if Path(src) == run and not other:          # this --force moves the run aside: the other one starts now
            other["proc"] = trainer(*train_args(solver, corpus, run, "--force", "--seed", "9"),
                                    stderr=subprocess.PIPE)
            other["err"] = other["proc"].communicate()[1]
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    assert trainAug.main(train_args(solver, corpus, run, "--force", "--seed", "8")) == 0
    monkeypatch.undo()
    assert other["proc"].returncode == 2 and "is in use by pid" in other["err"]
    assert (tmp_path / "run.old-1" / "final.caffemodel").read_bytes() == original
    assert not (tmp_path / "run.old-2").exists() and (run / "final.caffemodel").exists()


def test_two_processes_checking_audio_into_one_cache_keep_both_results(corpus, tmp_path, monkeypatch):
    """The audio-check cache is read, extended and written back: A reads it, B reads, checks and writes it,
    A writes it: B's results would be lost. With the lock, B waits for A, then reuses A's results."""
    from voxdata import scan

    wavs = sorted(str(p) for p in (corpus / "wav").rglob("*.wav"))
    a_paths, b_paths = wavs[:6], wavs[6:12]
    cache = tmp_path / ".audio_check.json"
    a_checking, a_go, b_moved = threading.Event(), threading.Event(), threading.Event()
    real_check = scan._check_one

    def check(path, *args):
        if path == a_paths[0]:
            a_checking.set()
            a_go.wait()
        return real_check(path, *args)

    class BWaits(logging.Handler):
        def emit(self, record):
            if "waiting for another process" in record.getMessage():
                b_moved.set()

    monkeypatch.setattr(scan, "_check_one", check)
    handler, lock_log = BWaits(), logging.getLogger("voxdata.lockfile")
    old_level = lock_log.level
    lock_log.addHandler(handler)
    lock_log.setLevel(logging.INFO)          # the "waiting" line is INFO, whatever level the root logger has here
    results = {}

    def scan_into(name, paths):
        results[name] = scan.scan_audio(paths, cache_file=str(cache), workers=1)
        b_moved.set()

    try:
        a = threading.Thread(target=scan_into, args=("a", a_paths))
        a.start()
        a_checking.wait()
        b = threading.Thread(target=scan_into, args=("b", b_paths))
        b.start()
        b_moved.wait()              # B is waiting for A's lock, or (without one) has written the cache already
        a_go.set()
        a.join()
        b.join()
    finally:
        a_go.set()
        lock_log.removeHandler(handler)
        lock_log.setLevel(old_level)
    assert len(results["a"].good) == 6 and len(results["b"].good) == 6
    files = json.loads(cache.read_text())["files"]
    assert set(map(os.path.abspath, a_paths + b_paths)) <= set(files)


# ---------------------------------------------------------------- stop signals before training

def test_stop_during_the_audio_check_exits_at_once_keeping_what_it_checked(corpus, tmp_path, monkeypatch,
                                                                            capsys, signals):
    from voxdata import scan

    real_check, calls = scan._check_one, []

    def check(path, *args):
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_check(path, *args)

    monkeypatch.setattr(scan, "_check_one", check)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "a", max_iter=4, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 99
    err = capsys.readouterr().err
    assert "stopped by SIGTERM while checking the audio, before training" in err and "Traceback" not in err
    assert "audio check stopped after" in err
    assert not list(run.glob("snapshots/*")) and not (run / "args.json").exists() and not temporaries(tmp_path)
    checked = json.loads((tmp_path / ".audio_check.json").read_text())["files"]
    assert len(checked) < 24                                             # it stopped: not all checked
    monkeypatch.undo()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0      # it can go on


def test_stop_during_the_cache_build_stops_it_after_the_current_file(corpus, tmp_path, monkeypatch, capsys,
                                                                    signals):
    import functools

    import voxdata

    real_build = voxdata.build_cache          # the signal arrives once the 3rd file is decoded and journaled
    monkeypatch.setattr(voxdata, "build_cache", functools.partial(
        real_build, on_file=lambda n: os.kill(os.getpid(), signal.SIGTERM) if n == 3 else None))
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "c", max_iter=4, snapshot=2)
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert trainAug.main(train_args(solver, corpus, run, "--cache", str(cache))) == 99
    err = capsys.readouterr().err
    assert "stopped by SIGTERM while building the audio cache, before training" in err and "Traceback" not in err
    assert "stopped (SIGTERM) after 3 of " in (run / "train.log").read_text()    # no file after the signal's
    assert not (cache / "index.json").exists()                          # nothing that looks complete
    assert not list(run.glob("snapshots/*")) and not (run / "args.json").exists()
    monkeypatch.undo()
    assert trainAug.main(train_args(solver, corpus, run, "--cache", str(cache), "--resume", "auto")) == 0
    assert "continuing an unfinished build (3 files already decoded)" in (run / "train.log").read_text()


def test_stop_during_solver_construction_exits_at_once(corpus, tmp_path, monkeypatch, capsys, signals):
    import caffe_torch.solver as cs

    real_make = cs.Solver._make_net

    def make(self, phase, *a, **kw):
        net = real_make(self, phase, *a, **kw)
        os.kill(os.getpid(), signal.SIGTERM)           # after the train net, before the rest
        return net

    monkeypatch.setattr(cs.Solver, "_make_net", make)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "b", max_iter=4, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 99
    err = capsys.readouterr().err
    assert "stopped by SIGTERM while building the solver" in err and "Traceback" not in err
    assert not list(run.glob("snapshots/*")) and not (run / "args.json").exists() and not temporaries(run)


def test_sighup_stops_like_sigterm(corpus, tmp_path):
    """The terminal went away (SIGHUP) at iteration 3: snapshot, exit 99, then --resume auto continues."""
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "h", max_iter=6, snapshot=0)
    run = tmp_path / "run"
    proc = trainer(*train_args(solver, corpus, run), at="step:4:SIGHUP", stderr=subprocess.PIPE)
    err = proc.communicate()[1]
    assert proc.returncode == 99, err[-2000:]
    assert "SIGHUP received: finishing this iteration" in err
    assert (run / "snapshots" / "h_iter_4.solverstate").exists()


# ---------------------------------------------------------------- a second Ctrl-C

def test_second_ctrl_c_during_the_stop_snapshot_aborts_it_and_the_previous_one_stays_valid(
        corpus, tmp_path, monkeypatch, capsys, signals):
    import caffe_torch.solver as cs

    solver = write_solver(tmp_path, DROPOUT_HEAD, "s", max_iter=6, snapshot=2)
    full = tmp_path / "full"
    assert trainAug.main(train_args(solver, corpus, full)) == 0
    real_step, real_write = cs.Solver.step, cs.write_proto_atomic

    def step(self, n):
        real_step(self, n)
        if self.iter == 3:
            os.kill(os.getpid(), signal.SIGINT)        # Ctrl-C: finish the iteration, snapshot, exit

    def write_state(message, path):
        if str(path).endswith("_iter_3.solverstate"):
            os.kill(os.getpid(), signal.SIGINT)        # Ctrl-C again, while the snapshot is being written
        return real_write(message, path)

    monkeypatch.setattr(cs.Solver, "step", step)
    monkeypatch.setattr(cs, "write_proto_atomic", write_state)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 99
    err = capsys.readouterr().err
    assert "second SIGINT: aborted while writing the snapshot s_iter_3.solverstate, which may be incomplete" in err
    assert "the snapshot s_iter_2.solverstate stays valid" in err
    assert not (run / "snapshots" / "s_iter_3.solverstate").exists() and not temporaries(run)
    monkeypatch.undo()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    assert "(iteration 2)" in (run / "train.log").read_text()
    same_weights(full / "final.caffemodel", run / "final.caffemodel")


def test_second_ctrl_c_before_the_snapshot_aborts_at_once(corpus, tmp_path, monkeypatch, capsys, signals):
    import caffe_torch.solver as cs

    real_step = cs.Solver.step

    def step(self, n):
        real_step(self, n)
        if self.iter == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)        # e.g. during a long validation: the user means it

    monkeypatch.setattr(cs.Solver, "step", step)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "t", max_iter=40, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 99
    err = capsys.readouterr().err
    assert "second SIGINT: aborted before the snapshot was written; the snapshot t_iter_2.solverstate stays" in err
    assert not (run / "snapshots" / "t_iter_4.solverstate").exists()


# ---------------------------------------------------------------- exceptions inside the loop

def _fail_at(monkeypatch, layer_name: str, call: int, exc: BaseException):
    """Raise `exc` in the `call`-th TRAIN forward of layer `layer_name` (after the layers before it ran)."""
    from caffe_torch.layers.common import InnerProduct
    from caffe_torch.proto import caffe_pb2

    real_forward, calls = InnerProduct.forward, []

    def forward(self, *a):
        if self.name == layer_name and self.phase == caffe_pb2.TRAIN:
            calls.append(1)
            if len(calls) == call:
                raise exc
        return real_forward(self, *a)

    monkeypatch.setattr(InnerProduct, "forward", forward)


def test_out_of_memory_in_the_loop_snapshots_the_last_completed_iteration(corpus, tmp_path, monkeypatch, capsys):
    """A CUDA out-of-memory in iteration 6's forward (after its Dropout drew masks): one line with the cause and
    how to resume, a snapshot of iteration 6 (the generator as it was before that forward), and the resumed run
    equals an uninterrupted one bit for bit."""
    solver = write_solver(tmp_path, DROPOUT_HEAD, "m", max_iter=8, snapshot=4)
    full, run = tmp_path / "full", tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, full)) == 0
    _fail_at(monkeypatch, "fc6", 7, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert trainAug.main(train_args(solver, corpus, run)) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err
    line = error_lines(err)[0]
    assert "CUDA out of memory" in line and "(iteration 6)" in line and "m_iter_6.solverstate" in line
    assert "--resume auto" in line
    monkeypatch.undo()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    assert "(iteration 6)" in (run / "train.log").read_text()
    same_weights(full / "final.caffemodel", run / "final.caffemodel")


def test_an_exception_in_the_middle_of_the_update_writes_no_snapshot(corpus, tmp_path, monkeypatch, capsys):
    import caffe_torch.solver as cs

    real_update = cs.SGDSolver.compute_update

    def update(self, indices, grads, rate):
        real_update(self, indices, grads, rate)         # the history of iteration 6 updated already
        if self.iter == 6:
            raise RuntimeError("device lost")

    monkeypatch.setattr(cs.SGDSolver, "compute_update", update)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "u", max_iter=8, snapshot=4)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err
    assert "device lost (iteration 6); no snapshot of iteration 6 (it came during the weight update)" in err
    assert "--resume auto (from u_iter_4.solverstate)" in err
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["u_iter_4.caffemodel", "u_iter_4.solverstate"]


def _killed_after_the_snapshot_of_iteration_4(corpus, tmp_path, prefix: str, curve_lines) -> tuple:
    """A run of 8 iterations (snapshots at 4 and 8) and its uninterrupted twin; the run put back to what a kill -9
    after the snapshot of iteration 4 leaves: no iteration-8 snapshot, no final weights, the curve's lines
    `curve_lines(lines)` written as they are. Returns (solver, twin, run)."""
    solver = write_solver(tmp_path, SOFTMAX_HEAD, prefix, max_iter=8, snapshot=4)
    full, run = tmp_path / "full", tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, full)) == 0
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    curve = run / "training_curve.csv"
    curve.write_text("\r\n".join(curve_lines(curve.read_text().splitlines())))
    (run / "final.caffemodel").unlink()
    for p in (run / "snapshots").glob(f"{prefix}_iter_8.*"):
        p.unlink()
    return solver, full, run


def test_a_torn_or_garbled_curve_is_repaired_on_resume(corpus, tmp_path, capsys):
    def damaged(lines):      # a short row, a garbled one, and the validation row of 4 cut short by a kill -9
        return [lines[0], *(ln for ln in lines[1:] if int(ln.split(",")[0]) < 4), "2", "3,abc,,,", "4,,,0.1"]

    solver, full, run = _killed_after_the_snapshot_of_iteration_4(corpus, tmp_path, "c", damaged)
    capsys.readouterr()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    assert "dropped 3 incomplete or garbled row(s) (first: '2')" in capsys.readouterr().err
    cols = lambda p: [(r[0], r[2], r[3]) for r in (ln.split(",") for ln in p.read_text().splitlines())]  # noqa: E731
    assert cols(run / "training_curve.csv") == cols(full / "training_curve.csv")      # validation at 4 too


def test_a_validation_due_at_the_resume_iteration_runs(corpus, tmp_path):
    """Killed after the snapshot of iteration 4 and before its validation: the resumed run validates at 4."""
    def before_4(lines):
        return [ln for ln in lines if ln.split(",")[0] in ("iteration", "0", "1", "2", "3")] + [""]

    solver, full, run = _killed_after_the_snapshot_of_iteration_4(corpus, tmp_path, "v", before_4)
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    val_rows = [ln for ln in (run / "training_curve.csv").read_text().splitlines()[1:] if ln.split(",")[3]]
    assert [r.split(",")[0] for r in val_rows] == ["4", "8"]
    full_val = [ln for ln in (full / "training_curve.csv").read_text().splitlines()[1:] if ln.split(",")[3]]
    assert val_rows == full_val


# ---------------------------------------------------------------- data parallel: Dropout and the loader

def test_dropout_rows_draw_the_global_batchs_masks_bit_for_bit(tmp_path):
    """Two halves of a batch, each in a net whose Dropout knows its rows of the global batch, draw exactly the
    masks one net draws for the whole batch (the data-parallel processes' rule)."""
    import caffe_torch as caffe
    from caffe_torch.layers.common import Dropout

    def net(batch):
        path = tmp_path / f"drop{batch}.prototxt"
        path.write_text(f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {batch} dim: 5 '
                        'dim: 3 } } }\nlayer { name: "d" type: "Dropout" bottom: "x" top: "y" '
                        'dropout_param { dropout_ratio: 0.3 } }\n')
        caffe.set_random_seed(11)
        return caffe.Net(str(path), caffe.TRAIN)

    whole = net(8)
    halves = [net(4), net(4)]
    for r, half in enumerate(halves):
        layer = next(m for m in half.modules if isinstance(m, Dropout))
        layer.rows = (4 * r, 8)
    for _ in range(3):                                  # several draws: the generators stay in step
        whole.blobs["x"].data[...] = 1.0
        whole.forward()
        want = whole.blobs["y"].data.copy()
        got = []
        for half in halves:
            half.blobs["x"].data[...] = 1.0
            half.forward()
            got.append(half.blobs["y"].data.copy())
        np.testing.assert_array_equal(np.concatenate(got), want)
        assert 0 < (want == 0).mean() < 1


def test_a_slice_of_the_batch_decodes_only_its_rows(corpus):
    from voxdata import scan_audio
    from voxdata.loader import TrainBatches

    wavs = sorted(str(p) for p in (corpus / "wav").rglob("*.wav"))
    lengths = scan_audio(wavs).samples
    labels = np.arange(len(wavs)) % 4
    whole = TrainBatches(wavs, labels, batch_size=6, frames=20, seed=5)
    reads = []

    def counting(batches):
        from voxdata.audio import read_wav

        batches._read = lambda p: reads.append(p) or read_wav(p)
        return batches

    for lo, hi in ((0, 3), (3, 6)):
        part = counting(TrainBatches(wavs, labels, batch_size=6, frames=20, seed=5, rows=(lo, hi),
                                     lengths=[lengths[p] for p in wavs]))
        for k in (0, 7):
            reads.clear()
            crops, labs = part.batch(k)
            want_crops, want_labels = whole.batch(k)
            np.testing.assert_array_equal(crops, want_crops[lo:hi])
            np.testing.assert_array_equal(labs, want_labels[lo:hi])
            assert len(reads) == hi - lo


def test_two_ranks_with_dropout_equal_one_process_and_wait_on_locks_not_a_process_group(corpus, tmp_path):
    """torchrun with 2 gloo processes, a Dropout net and a --cache that does not exist yet, against one process:
    each rank's Dropout kept exactly the units one process keeps in that rank's rows of every batch (bit for
    bit: each rank draws the global batch's masks), the weights are one process's (up to the order of the
    gradient sums), each rank read only its 3 rows per batch, and the rank that built the cache saw the other
    wait for the cache's lock, not in the process group (whose collectives time out)."""
    from crash_harness import NET
    from test_ddp import args_for

    (tmp_path / "net.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "net.prototxt"\nbase_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3 momentum: 0.9 '
                      'weight_decay: 0.0005\nmax_iter: 6 display: 2 average_loss: 2 snapshot: 3 '
                      'snapshot_prefix: "result/ddp"\n')
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)

    def hooked(launch: list[str], name: str) -> Path:
        """The trainer under tests/hooked_run.py's --ddp-events, launched by `launch`; returns the events folder."""
        events = tmp_path / f"events-{name}"
        events.mkdir()
        cmd = [sys.executable, *launch, "-m", "tests.hooked_run", "--ddp-events", str(events), "--",
               *args_for(solver, corpus, tmp_path / name, "--cache", str(tmp_path / f"cache-{name}"))]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # hang guard
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return events

    one = hooked([], "single")
    events = hooked(["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"], "ddp")
    problems = []
    observed = [f.read_text() for f in events.glob("observed-rank*")]
    if observed != ["waiting"]:
        problems.append(f"the cache builder saw the other rank {observed}, not waiting for the cache's lock")
    reads = [int((events / f"reads-rank{r}").read_text()) for r in (0, 1)]
    if reads != [6 * 3, 6 * 3]:
        problems.append(f"the ranks read {reads} recordings in 6 iterations, not 3 per batch each")
    want = np.load(one / "masks-rank0.npz")
    ranks = [np.load(events / f"masks-rank{r}.npz") for r in (0, 1)]
    assert sorted(want.files) == [f"drop5_{n}" for n in range(6)], want.files      # one mask per iteration
    assert 0 < np.mean([want[k].mean() for k in want.files]) < 1                   # units kept and dropped
    for key in want.files:
        got = np.concatenate([r[key] for r in ranks]) if all(key in r.files for r in ranks) else None
        if got is None or not np.array_equal(got, want[key]):
            problems.append(f"{key}: the ranks' Dropout masks are not those of one process's batch")
    zeros = [int((folder / f"zeros-rank{r}").read_text()) for folder, r in ((one, 0), (events, 0), (events, 1))]
    assert zeros == [0, 0, 0], zeros                # (an exact zero input would hide whether it was kept)
    a, b = params_of(tmp_path / "single" / "final.caffemodel"), params_of(tmp_path / "ddp" / "final.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            if not np.allclose(y, x, rtol=1e-5, atol=1e-7):
                problems.append(f"{name}: largest difference to one process {np.abs(y - x).max():.3g}")
    assert not problems, problems


# ---------------------------------------------------------------- the crash harness

@pytest.mark.slow
def test_crash_harness_small(tmp_path):
    """tests/crash_harness.py with 3 kills (python -m tests.crash_harness --kills 20 runs more)."""
    from crash_harness import harness

    report = harness(3, seed=2, workdir=tmp_path, say=lambda line: None)
    assert report.problems == [] and len(report.kills) == 3 and report.runs_checked >= 1
