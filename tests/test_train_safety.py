"""Training runs that cannot lose work or learn from silence (issue 15): each case of the issue's "Why" list
gives a clear one-line error or a documented skip with nothing lost."""

import json
import os
import signal

import numpy as np
import pytest
from test_e2e import FRAMES, SOFTMAX_HEAD, SOLVER, TRUNK, params_of, train_args, write_solver

import test_identification
import trainAug


def train_rows(corpus):
    return [line.split()[1] for line in (corpus / "iden_split.txt").read_text().splitlines()
            if line.split()[0] == "1" and not line.split()[1].startswith(("id10005", "id10006"))]


def error_lines(text):
    return [line for line in text.splitlines() if "error: " in line]


# ---------------------------------------------------------------- 2. run directories

def test_same_command_twice_refuses_then_force_moves_the_old_run_aside(corpus, tmp_path, capsys):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "twice", max_iter=2, snapshot=0)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    first = (run / "final.caffemodel").read_bytes()
    capsys.readouterr()

    assert trainAug.main(train_args(solver, corpus, run, "--seed", "9")) == 1
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume auto" in err and "--force" in err
    assert len(error_lines(err)) == 1
    assert (run / "final.caffemodel").read_bytes() == first            # nothing overwritten

    assert trainAug.main(train_args(solver, corpus, run, "--seed", "9", "--force")) == 0
    assert (tmp_path / "run.old-1" / "final.caffemodel").read_bytes() == first
    assert (run / "final.caffemodel").read_bytes() != first             # a new run (another seed)
    assert "now in" in (run / "train.log").read_text()


def test_out_that_is_a_file_or_under_proc_is_one_line(corpus, tmp_path, capsys):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "f", max_iter=2, snapshot=0)
    (tmp_path / "afile").write_text("x")
    assert trainAug.main(train_args(solver, corpus, tmp_path / "afile")) == 1
    err = capsys.readouterr().err
    assert "a file of that name exists" in err and len(err.strip().splitlines()) == 1
    assert trainAug.main(train_args(solver, corpus, "/proc/nope/run")) == 1
    err = capsys.readouterr().err
    assert "cannot create the run directory /proc/nope/run" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- 3. pre-flight of the audio

def test_bad_audio_refused_before_iteration_0_or_skipped_and_counted(own_corpus, tmp_path, capsys):
    rows = train_rows(own_corpus)
    (own_corpus / "wav" / rows[0]).write_bytes(b"")                                  # 0 bytes
    (own_corpus / "wav" / rows[1]).write_bytes((own_corpus / "wav" / rows[1]).read_bytes()[:60])  # truncated
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "bad", max_iter=4, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, own_corpus, run)) == 1
    err = capsys.readouterr().err
    assert "2 of " in err and "unusable" in err and "--skip-bad-audio" in err and len(error_lines(err)) == 1
    listed = (run / "bad_audio.txt").read_text()
    assert rows[0] in listed and rows[1] in listed and "truncated" in listed
    assert not list(run.rglob("*.caffemodel")) and not list(run.rglob("*.solverstate"))   # stopped before training
    assert "unusable" in (run / "train.log").read_text()

    # the refused start left no run behind: the same --out takes the retry without --resume or --force
    assert trainAug.main(train_args(solver, own_corpus, run, "--skip-bad-audio")) == 0
    log = (run / "train.log").read_text()
    assert "leaving out 2 unusable recordings" in log                     # at the start
    assert "2 unusable recordings were left out" in log                   # and at the end
    assert "2 unusable" in log.split("Optimization Done")[1]
    # the check ran once per file: the second start reused every cached result
    assert "results reused" in log and json.loads((tmp_path / ".audio_check.json").read_text())["files"]


def test_float_wavs_train_like_their_int16_originals(own_corpus, tmp_path):
    """A corpus converted to FLOAT wavs trains to the same weights as the int16 one (not on silence)."""
    import soundfile as sf

    solver = write_solver(tmp_path, SOFTMAX_HEAD, "flt", max_iter=3, snapshot=0)
    assert trainAug.main(train_args(solver, own_corpus, tmp_path / "int16")) == 0
    for wav in (own_corpus / "wav").rglob("*.wav"):
        x, rate = sf.read(wav, dtype="int16")
        sf.write(wav, x.astype(np.float64) / 32768, rate, subtype="FLOAT")
    assert trainAug.main(train_args(solver, own_corpus, tmp_path / "float")) == 0
    a, b = params_of(tmp_path / "int16" / "final.caffemodel"), params_of(tmp_path / "float" / "final.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_speaker_without_training_utterance_is_an_error(own_corpus, tmp_path, capsys):
    split = own_corpus / "iden_split.txt"
    lines = split.read_text().splitlines()
    split.write_text("\n".join(ln for ln in lines if not (ln.startswith("1 id10002") or
                                                           ln.startswith("3 id10002"))) + "\n")
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "nospk", max_iter=2, snapshot=0)
    assert trainAug.main(train_args(solver, own_corpus, tmp_path / "r")) == 1
    err = capsys.readouterr().err
    assert "id10002" in err and "never be trained" in err


# ---------------------------------------------------------------- 4. weights that cover only part of the net

def _cut_caffemodel(src, dst, keep):
    from caffe_torch.weights import read_caffemodel

    net = read_caffemodel(src)
    kept = [lp for lp in net.layer if lp.name in keep]
    del net.layer[:]
    net.layer.extend(kept)
    dst.write_bytes(net.SerializeToString())
    return dst


def test_partial_weights(corpus, tmp_path, capsys):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "w", max_iter=2, snapshot=1)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    cut = _cut_caffemodel(run / "final.caffemodel", tmp_path / "cut.caffemodel", {"conv1_1", "relu1_1"})
    capsys.readouterr()

    # fine-tuning from it: allowed, the layers left at their fillers are named once in the log
    assert trainAug.main(train_args(solver, corpus, tmp_path / "ft", "--weights", str(cut))) == 0
    log = (tmp_path / "ft" / "train.log").read_text()
    assert "keep their fillers: fc5, fc6" in log and log.count("keep their fillers") == 1

    # the test script: an error naming the layers
    assert test_identification.main(["--weights", str(cut), "--run-dir", str(run), "--data-root", str(corpus),
                                     "--crops", "2", "--gpu", "-1", "--out", str(tmp_path / "t"),
                                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "fc5" in err and "fc6" in err and "random fillers" in err
    # a missing weights file is named as such (not as a prototxt problem)
    assert test_identification.main(["--weights", str(tmp_path / "missing.caffemodel"), "--data-root",
                                     str(corpus), "--out", str(tmp_path / "t2")]) == 1
    assert "--weights" in capsys.readouterr().err

    # --resume from a snapshot that lacks layers (its state records the cut file's digest, as if written so):
    # an error for FILE...
    from caffe_torch.weights import file_sha256, read_solverstate

    state = run / "snapshots" / "w_iter_2.solverstate"
    cut2 = _cut_caffemodel(run / "snapshots" / "w_iter_2.caffemodel", run / "snapshots" / "w_iter_2.caffemodel",
                           {"conv1_1"})
    recorded = read_solverstate(state)
    recorded.learned_net_sha256 = file_sha256(cut2)
    state.write_bytes(recorded.SerializeToString())
    assert trainAug.main(train_args(solver, corpus, run, "--resume", str(state))) == 1
    assert "not a snapshot of this net" in capsys.readouterr().err
    # ...and skipped (with a word) by --resume auto, which falls back to iteration 1
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    log = (run / "train.log").read_text()
    assert "skipping w_iter_2.solverstate" in log and "(iteration 1)" in log


# ---------------------------------------------------------------- 5. signals, I/O errors, resume

def test_second_scheduler_signal_is_ignored_and_status_stays_99(corpus, tmp_path, monkeypatch):
    """Grid Engine's -notify sends SIGUSR1 then SIGUSR2: the second must not cut the snapshot short (a second
    Ctrl-C does: tests/test_run_safety.py)."""
    import speaker.train as train

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                                               signal.SIGHUP)}
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "sig", max_iter=50, snapshot=0)
    real_step = None

    def step_then_signals(self, n):
        real_step(self, n)
        if self.iter == 3:
            os.kill(os.getpid(), signal.SIGUSR1)       # the stop
            os.kill(os.getpid(), signal.SIGUSR2)       # a second one before the snapshot

    real_snapshot = train.snapshot

    def snapshot_with_sigterm(run, solver, stop):
        os.kill(os.getpid(), signal.SIGTERM)           # during the snapshot
        return real_snapshot(run, solver, stop)

    real_close = train.Progress.close

    def close_with_ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)            # after the snapshot, while finishing
        real_close(self)

    import caffe_torch.solver as cs

    real_step = cs.Solver.step
    monkeypatch.setattr(cs.Solver, "step", step_then_signals)
    monkeypatch.setattr(train, "snapshot", snapshot_with_sigterm)
    monkeypatch.setattr(train.Progress, "close", close_with_ctrl_c)
    try:
        assert trainAug.main(train_args(solver, corpus, tmp_path / "run")) == 99
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "SIGUSR1 received: finishing" in log and "SIGUSR2 received again: ignored" in log
    assert "SIGTERM received again: ignored" in log
    assert "SIGINT received: ignored, the results are written" in log          # once the snapshot is written
    assert (tmp_path / "run" / "snapshots" / "sig_iter_3.solverstate").exists()


def test_disk_full_names_path_and_operation_in_one_line_and_train_log(corpus, tmp_path, monkeypatch, capsys):
    import errno

    import caffe_torch.solver as cs

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))         # as a write() reports it: no file

    monkeypatch.setattr(cs.Solver, "snapshot", full)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "full", max_iter=4, snapshot=2)
    assert trainAug.main(train_args(solver, corpus, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err
    assert "cannot write the snapshot" in err and "full_iter_2" in err and "No space left on device" in err
    assert "cannot write the snapshot" in (tmp_path / "run" / "train.log").read_text()
    # with -v the traceback is there too
    assert trainAug.main(train_args(solver, corpus, tmp_path / "run2", "-v")) == 1
    assert "Traceback" in capsys.readouterr().err


def test_resume_auto_falls_back_past_a_corrupt_snapshot_and_curve_has_no_repeats(corpus, tmp_path):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "cr", max_iter=8, snapshot=4)
    full, run = tmp_path / "full", tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, full)) == 0
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    first_args = json.loads((run / "args.json").read_text())
    # as after a kill -9 just after the iteration-8 snapshot was started: corrupt, no final weights
    state8 = run / "snapshots" / "cr_iter_8.solverstate"
    state8.write_bytes(state8.read_bytes()[:7])
    (run / "final.caffemodel").unlink()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    log = (run / "train.log").read_text()
    assert "skipping cr_iter_8.solverstate" in log and "resuming from" in log and "(iteration 4)" in log
    args = json.loads((run / "args.json").read_text())
    assert args["argv"] == first_args["argv"] and args["resumes"][0]["iteration"] == 4
    # the resumed run equals an uninterrupted one, and its curve lists each iteration once
    a, b = params_of(full / "final.caffemodel"), params_of(run / "final.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)
    rows = [r.split(",") for r in (run / "training_curve.csv").read_text().splitlines()[1:]]
    loss_its = [r[0] for r in rows if r[1]]
    val_its = [r[0] for r in rows if r[3]]
    assert len(loss_its) == len(set(loss_its)) and len(val_its) == len(set(val_its))
    full_rows = [r.split(",") for r in (full / "training_curve.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[2], r[3]) for r in rows] == [(r[0], r[2], r[3]) for r in full_rows]


def test_resume_auto_with_no_loadable_snapshot_is_an_error(corpus, tmp_path, capsys):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "nl", max_iter=2, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    for state in (run / "snapshots").glob("*.solverstate"):
        state.write_bytes(b"\xff\xff")
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 1
    assert "none of the 1 snapshots" in capsys.readouterr().err


# ---------------------------------------------------------------- 6. errors name the user's files

def test_too_short_input_names_the_layer_and_the_smallest_frames(corpus, tmp_path, capsys):
    net = tmp_path / "short_net.prototxt"
    net.write_text(TRUNK.format(frames=6, pooled=FRAMES // 2) + SOFTMAX_HEAD.format(classes=4))
    solver = tmp_path / "short_solver.prototxt"
    solver.write_text(SOLVER.format(net=net.name, lr=0.1, max_iter=2, snapshot=0, prefix="s"))
    assert trainAug.main(train_args(solver, corpus, tmp_path / "r")) == 1
    err = capsys.readouterr().err
    # conv stride 2 halves the frames; pooling needs FRAMES // 2 rows: FRAMES - 1 frames is the least
    assert "res4_3p" in err and "has 6 frames" in err and f"at least {FRAMES - 1}" in err
    assert str(net) in err and "negative dimension" not in err


def test_layer_errors_cite_the_users_prototxt(corpus, tmp_path, capsys):
    net = tmp_path / "mine.prototxt"
    bad_head = SOFTMAX_HEAD.format(classes=4).replace('type: "Accuracy" bottom: "fc6" bottom: "label"',
                                                      'type: "Accuracy" accuracy_param { top_k: 9 } '
                                                      'bottom: "fc6" bottom: "label"')
    net.write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2) + bad_head)
    solver = tmp_path / "mine_solver.prototxt"
    solver.write_text(SOLVER.format(net=net.name, lr=0.1, max_iter=2, snapshot=0, prefix="m"))
    assert trainAug.main(train_args(solver, corpus, tmp_path / "r")) == 1
    err = capsys.readouterr().err
    assert f"{net}:" in err and "top1Accuracy" in err and "net.prototxt" not in err


def test_gpu_without_cuda_is_one_line(corpus, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "g", max_iter=2, snapshot=0)
    args = train_args(solver, corpus, tmp_path / "r")
    args[args.index("--gpu") + 1] = "0"
    assert trainAug.main(args) == 1
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--gpu -1" in err and len(err.strip().splitlines()) == 1


def test_worker_error_is_one_line_and_a_snapshot_is_kept(own_corpus, tmp_path, monkeypatch, capsys):
    """A recording that breaks after the pre-flight check (here: emptied during the run) stops the run with
    the file's message, not a worker traceback, and the iterations done so far are saved."""
    import speaker.train as train

    rows = train_rows(own_corpus)
    real_step = None

    def step_then_break_files(self, n):
        real_step(self, n)
        if self.iter == 2:
            for rel in rows:
                (own_corpus / "wav" / rel).write_bytes(b"")

    import caffe_torch.solver as cs

    real_step = cs.Solver.step
    monkeypatch.setattr(cs.Solver, "step", step_then_break_files)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "wk", max_iter=30, snapshot=0)
    run = tmp_path / "run"
    assert train.main(train_args(solver, own_corpus, run, workers=1)) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err and "unreadable audio file" in err
    assert list((run / "snapshots").glob("wk_iter_*.solverstate"))


def test_identification_gpu_without_cuda_is_one_line(corpus, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "gi", max_iter=1, snapshot=0)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    capsys.readouterr()
    assert test_identification.main(["--weights", str(run / "final.caffemodel"), "--data-root", str(corpus),
                                     "--crops", "2", "--gpu", "0", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err


def test_rerunning_a_finished_run_with_resume_auto_changes_nothing(corpus, tmp_path):
    """tools/demo.sh reruns finished stages with --resume auto: same final weights, no repeated curve rows."""
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "done", max_iter=4, snapshot=2)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run)) == 0
    curve, final = (run / "training_curve.csv").read_text(), (run / "final.caffemodel").read_bytes()
    assert trainAug.main(train_args(solver, corpus, run, "--resume", "auto")) == 0
    assert (run / "training_curve.csv").read_text() == curve and (run / "final.caffemodel").read_bytes() == final


def test_net_file_is_found_in_the_repository_from_another_directory(tmp_path, monkeypatch):
    """sge/train.sge runs in the submit directory: a solver's `net: "prototxt/..."` is looked up there, next
    to the solver, then in the repository (as the test scripts find lists/)."""
    from speaker.train import REPO, read_solver_and_net

    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "prototxt/demo/ResNet-20_softmax.prototxt"\nbase_lr: 0.1\nmax_iter: 1\n')
    monkeypatch.chdir(tmp_path)
    _, net_path, _ = read_solver_and_net(str(solver))
    assert net_path == REPO / "prototxt" / "demo" / "ResNet-20_softmax.prototxt"


@pytest.mark.caffe
def test_real_caffe_too_short_input_is_an_error_not_an_abort(corpus, tmp_path, capsys):
    """A real Caffe CHECK-aborts the process on a negative blob shape; the trainer asks caffe_torch first."""
    from speaker.engine import try_import_pycaffe

    caffe, why = try_import_pycaffe()
    if caffe is None:
        pytest.skip(f"no pycaffe: {why}")
    net = tmp_path / "short_net.prototxt"
    net.write_text(TRUNK.format(frames=6, pooled=FRAMES // 2) + SOFTMAX_HEAD.format(classes=4))
    solver = tmp_path / "short_solver.prototxt"
    solver.write_text(SOLVER.format(net=net.name, lr=0.1, max_iter=2, snapshot=0, prefix="s"))
    assert trainAug.main(train_args(solver, corpus, tmp_path / "r", "--engine", "caffe")) == 1
    err = capsys.readouterr().err
    assert f"{net}:" in err and "res4_3p" in err and f"at least {FRAMES - 1}" in err
