"""Today's recipe end to end on synthetic data: a VoxCeleb2-layout m4a corpus (data_utils.py synth --format m4a) is
scanned or read through a train list, alone or beside a VoxCeleb1 root; a tiny net trains on it with noise + RIR
augmentation (synth-noise folders) and --cache, and test_verification scores its trials; a resumed run with
augmentation equals the uninterrupted one bit for bit, and two data-parallel processes equal one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import one_error_line
from test_e2e import FRAMES, SOFTMAX_HEAD, SOLVER, SPEAKERS, TEST_SPEAKERS, TRUNK, params_of

import data_utils
import test_verification
import trainAug
from voxdata import ListFormatError, TrainBatches, read_wav
from voxdata.m4a import write_m4a
from voxdata.roots import read_train_list, scan_folder, training_splits

ROOT = Path(__file__).resolve().parent.parent
DEV, TEST = 4, 2             # speakers of the m4a corpus: dev (trained on) and test (trials)


@pytest.fixture(scope="module")
def vox2(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox2")
    assert data_utils.main(["synth", "--format", "m4a", "--out", str(root), "--speakers", str(DEV + TEST),
                            "--utterances", "5", "--test-speakers", str(TEST), "--seed", "6", "--min-videos", "3",
                            "--max-videos", "3", "--min-dur", "1.0", "--max-dur", "1.5", "--trials", "20",
                            "--workers", "1", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def vox1(corpus):
    """The shared tiny VoxCeleb1-layout corpus (tests/conftest.py) as the VoxCeleb1 root beside VoxCeleb2's."""
    return corpus


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise")
    assert data_utils.main(["synth-noise", "--out", str(out), "--noise", "2", "--music", "2", "--speech", "4",
                            "--rooms", "1", "--rirs-per-room", "2"]) == 0
    return ["--noise", str(out / "musan"), "--rir", str(out / "simulated_rirs")]


def test_layout_scan_and_lists(vox2, vox1, tmp_path):
    dev = vox2 / "dev" / "aac"
    assert scan_folder(vox2) == str(dev)
    files = sorted(str(p) for p in dev.rglob("*.m4a"))
    assert len(files) == DEV * 5 and all(read_wav(p).dtype == np.int16 for p in files[:2])
    splits = training_splits([str(vox2)], "verification")
    assert splits.speakers == [f"id{i:05d}" for i in range(1, DEV + 1)]
    assert sorted(splits.train.paths) == files and len(splits.val) == 0
    for p, label in zip(splits.train.paths, splits.train.labels):
        assert Path(p).relative_to(dev).parts[0] == splits.speakers[label]
    with pytest.raises(ListFormatError, match="--mode verification"):
        training_splits([str(vox2)], "identification")
    # unpacked without dev/: aac/idNNNNN/<video>/NNNNN.m4a
    flat = tmp_path / "flat"
    shutil.copytree(dev, flat / "aac")
    alone = training_splits([str(flat)], "verification")
    assert scan_folder(flat) == str(flat / "aac") and alone.speakers == splits.speakers
    assert [Path(p).relative_to(flat / "aac") for p in alone.train.paths] == \
        [Path(p).relative_to(dev) for p in splits.train.paths]

    # voxceleb_trainer's train_list.txt names converted wavs: the m4a of the same name is read
    listed = (vox2 / "train_list.txt").read_text().replace(".m4a", ".wav")
    (tmp_path / "train_list.txt").write_text(listed + "id00001 id00001/nosuchvideo/00001.wav\n")
    src = read_train_list(tmp_path / "train_list.txt", [str(vox2)])
    assert sorted(p for _, p in src.train) == files and src.missing == ["id00001/nosuchvideo/00001.wav"]
    (tmp_path / "bad_list.txt").write_text("id00001\n")
    with pytest.raises(ListFormatError, match=r"bad_list.txt:1: expected"):
        read_train_list(tmp_path / "bad_list.txt", [str(vox2)])

    # VoxCeleb1 (its iden_split.txt, verification mode: test speakers held out) + VoxCeleb2 dev (scanned)
    both = training_splits([str(vox1), str(vox2)], "verification",
                           {str(vox1): str(vox1 / "iden_split.txt")})
    vox1_train = [f"id{10001 + i}" for i in range(SPEAKERS - TEST_SPEAKERS)]
    assert both.speakers == sorted(vox1_train + splits.speakers)
    rows = [line.split() for line in (vox1 / "iden_split.txt").read_text().splitlines()]
    mine = [(split, rel) for split, rel in rows if rel.split("/")[0] in vox1_train]
    assert len(both.train) == len(splits.train) + sum(split != "2" for split, _ in mine)
    assert sorted(both.val.paths) == sorted(str(vox1 / "wav" / rel) for split, rel in mine if split == "2")
    assert {both.speakers[label] for label in both.val.labels} == set(vox1_train)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in both.train.paths + both.val.paths)
    with pytest.raises(ListFormatError, match="listed by both"):
        training_splits([str(vox2), str(vox2)], "verification")

    # a VoxCeleb1 folder without its list is scanned too; its test speakers (vox1_meta.csv) are left out
    bare = tmp_path / "vox1_bare"
    shutil.copytree(vox1 / "wav", bare / "wav")
    shutil.copy(vox1 / "vox1_meta.csv", bare)
    assert training_splits([str(bare)], "verification").speakers == vox1_train


def tiny_solver(folder: Path, classes: int, max_iter: int, snapshot: int, prefix: str) -> Path:
    net = folder / f"{prefix}_net.prototxt"
    net.write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2) + SOFTMAX_HEAD.format(classes=classes))
    solver = folder / f"{prefix}_solver.prototxt"
    solver.write_text(SOLVER.format(net=net.name, lr=0.05, max_iter=max_iter, snapshot=snapshot, prefix=prefix))
    return solver


def train_args(solver, roots, out, *extra):
    return ["--solver", str(solver), "--data-root", *map(str, roots), "--mode", "verification", "--out", str(out),
            "--gpu", "-1", "--workers", "0", "--test-interval", "0", "--no-progress", "--seed", "3", *extra]


def test_m4a_corpus_trains_with_augmentation_and_cache_and_verifies(vox2, noise, tmp_path):
    solver = tiny_solver(tmp_path, DEV, max_iter=6, snapshot=3, prefix="v2")
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, [vox2], run, "--cache", str(tmp_path / "cache"), *noise)) == 0
    log = (run / "train.log").read_text()
    assert "augmentation beside the paper's: reverberation p=0.2" in log and "noise p=0.6" in log
    assert "Optimization Done" in log
    labels = json.loads((run / "labels.json").read_text())
    assert labels["speakers"] == [f"id{i:05d}" for i in range(1, DEV + 1)]
    saved = (run / "train_list.txt").read_text().splitlines()
    assert len(saved) == DEV * 5 and all(line.split()[1].endswith(".m4a") for line in saved)
    recorded = json.loads((run / "args.json").read_text())["args"]
    assert (recorded["noise"], recorded["rir"]) == (noise[1], noise[3])
    assert recorded["noise_prob"] == 0.6 and recorded["snr_babble"] == [13.0, 20.0]
    cache = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert sorted(cache["paths"]) == sorted(line.split()[1] for line in saved)

    out = tmp_path / "verify"
    assert test_verification.main(["--weights", str(run / "final.caffemodel"), "--data-root", str(vox2),
                                   "--crops", "2", "--gpu", "-1", "--out", str(out), "--no-progress"]) == 0
    veri = json.loads((out / "verification.json").read_text())
    assert veri["trials"]["n"] == 20 and 0 <= veri["trials"]["eer"] <= 1


def test_corrupt_m4a_is_refused_before_iteration_0_or_skipped(vox2, tmp_path, capsys):
    own = shutil.copytree(vox2, tmp_path / "vox2")
    victim = sorted((own / "dev" / "aac").rglob("*.m4a"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    solver = tiny_solver(tmp_path, DEV, max_iter=2, snapshot=0, prefix="bad")
    assert trainAug.main(train_args(solver, [own], tmp_path / "refused")) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert len(errors) == 1 and "1 of 20 recordings are unusable" in errors[0] and str(victim) in errors[0]
    assert not (tmp_path / "refused" / "snapshots").exists() or not any((tmp_path / "refused" / "snapshots").iterdir())
    assert trainAug.main(train_args(solver, [own], tmp_path / "skipped", "--skip-bad-audio")) == 0
    log = (tmp_path / "skipped" / "train.log").read_text()
    assert "--skip-bad-audio: leaving out 1 unusable recordings" in log
    assert (tmp_path / "skipped" / "bad_audio.txt").read_text().startswith(f"{victim}: ")


def test_bad_recipe_arguments_are_one_line_before_the_run_folder_is_taken(vox2, noise, tmp_path, capsys):
    solver = tiny_solver(tmp_path, DEV, max_iter=2, snapshot=0, prefix="args")
    empty = tmp_path / "empty"
    empty.mkdir()
    half = tmp_path / "half_musan"            # noise/ and music/ but no speech/ (no babble)
    for cat in ("noise", "music"):
        shutil.copytree(Path(noise[1]) / cat, half / cat)
    nowhere = tmp_path / "nowhere"
    cases = [
        (["--noise", str(nowhere)], f"--noise {nowhere}: no such directory"),
        (["--rir", str(nowhere)], f"--rir {nowhere}: no such directory"),
        (["--noise", str(empty)], f"--noise {empty}: no .wav files under noise/"),
        (["--noise", str(half)], f"--noise {half}: no .wav files under speech/"),
        (["--rir", str(empty)], f"--rir {empty}: no .wav files below it"),
        ([*noise, "--noise-prob", "1.5"], "--noise-prob 1.5: must be in [0, 1]"),
        (["--train-list", str(nowhere)], f"--train-list {nowhere}: no such training list"),
    ]
    for extra, message in cases:
        run = tmp_path / "run"
        assert trainAug.main(train_args(solver, [vox2], run, *extra)) == 1, extra
        assert message in one_error_line(capsys.readouterr().err, "trainAug.py")
        assert not run.exists(), extra                                 # refused before anything was written


def test_a_bad_noise_file_is_one_line_before_training_or_left_out_and_counted(vox2, noise, tmp_path, capsys):
    own = shutil.copytree(noise[1], tmp_path / "musan")
    victim = sorted((own / "music").rglob("*.wav"))[0]
    victim.write_bytes(b"RIFF....WAVEfmt not audio")
    solver = tiny_solver(tmp_path, DEV, max_iter=2, snapshot=0, prefix="noise")
    recipe = ["--noise", str(own), "--rir", noise[3], "--noise-prob", "1.0"]
    assert trainAug.main(train_args(solver, [vox2], tmp_path / "refused", *recipe)) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"1 noise/RIR files are unusable (first: {victim}: " in line and "--skip-bad-audio" in line
    assert not any((tmp_path / "refused").glob("snapshots/*")) and not (tmp_path / "refused" / "args.json").exists()
    run = tmp_path / "skipped"
    assert trainAug.main(train_args(solver, [vox2], run, *recipe, "--skip-bad-audio")) == 0
    log = (run / "train.log").read_text()
    assert f"leaving out 1 unusable noise/RIR files (first: {victim}: " in log and "Optimization Done" in log
    assert (run / "bad_audio.txt").read_text().startswith(f"{victim}: ")


def test_wrong_rate_m4a_and_missing_listed_files(vox2, tmp_path, capsys):
    solver = tiny_solver(tmp_path, DEV, max_iter=2, snapshot=0, prefix="rate")
    own = shutil.copytree(vox2, tmp_path / "vox2")
    victim = sorted((own / "dev" / "aac").rglob("*.m4a"))[2]
    write_m4a(victim, read_wav(victim)[:44100], sample_rate=44100)   # a 44.1 kHz recording (1 s)
    assert trainAug.main(train_args(solver, [own], tmp_path / "r44")) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{victim}: sample rate 44100 Hz, expected 16000 Hz" in line and "1 of 20 recordings" in line
    assert not (tmp_path / "r44" / "snapshots").exists() or not any((tmp_path / "r44" / "snapshots").iterdir())

    # a --train-list naming a missing file: counted and named, the rest trains; naming only missing ones: refused
    listed = tmp_path / "list.txt"
    listed.write_text((vox2 / "train_list.txt").read_text() + "id00001 id00001/novideo/00001.m4a\n")
    assert trainAug.main(train_args(solver, [vox2], tmp_path / "r1", "--train-list", str(listed))) == 0
    log = (tmp_path / "r1" / "train.log").read_text()
    assert f"1 files listed in {listed} were not found (first: id00001/novideo/00001.m4a)" in log
    gone = tmp_path / "gone.txt"
    gone.write_text("id00001 id00001/novideo/00001.m4a\n")
    capsys.readouterr()
    assert trainAug.main(train_args(solver, [vox2], tmp_path / "r2", "--train-list", str(gone))) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"{gone}: no training utterance found" in line and "1 listed files missing" in line


def test_classifier_width_is_checked_against_the_scanned_speakers(vox2, tmp_path, capsys):
    solver = tiny_solver(tmp_path, DEV + 1, max_iter=2, snapshot=0, prefix="width")
    assert trainAug.main(train_args(solver, [vox2], tmp_path / "run")) == 1
    line = one_error_line(capsys.readouterr().err, "trainAug.py")
    assert f"num_output {DEV + 1} but {vox2} (verification mode) has {DEV} training speakers" in line


AUDIO_S = r"decoded (\d+) files \(([\d.]+) h of audio\) in ([\d.]+) s with (\d+) workers: ([\d.]+) files/s, " \
          r"([\d.]+) h of audio/s"


def test_cache_cli_over_a_vox2_root_reports_throughput_and_names_a_bad_m4a(vox2, tmp_path, caplog, capsys):
    """`data_utils.py cache --data-root` on VoxCeleb2's layout: every m4a cached, the closing line's files/s and
    hours of audio/s agree with its file count, the cached samples and its seconds (each printed rounded: the
    bounds are the rounding's); a damaged m4a then is one error line naming it, or skipped with --skip-bad."""
    import re

    from voxdata import WavCache

    own = shutil.copytree(vox2, tmp_path / "vox2")
    out = tmp_path / "cache"
    caplog.set_level("INFO")
    assert data_utils.main(["cache", "--data-root", str(own), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    files = sorted(str(p) for p in (own / "dev" / "aac").rglob("*.m4a"))
    cache = WavCache(out)
    assert len(cache) == len(files) and all(p in cache for p in files)
    hours = sum(len(cache.get(p)) for p in files) / 16000 / 3600
    (line,) = [r.getMessage() for r in caplog.records if "files/s" in r.getMessage()]
    n, h, s, workers, fps, hps = re.search(AUDIO_S, line).groups()
    assert (int(n), int(workers), h) == (len(files), 2, f"{hours:.2f}")
    s, fps, hps = float(s), float(fps), float(hps)
    slow, fast = s + 0.05, max(s - 0.05, 1e-9)           # the seconds, printed to 0.1
    assert len(files) / slow - 0.05 <= fps <= len(files) / fast + 0.05
    assert hours / slow - 0.0005 <= hps <= hours / fast + 0.0005

    victim = Path(files[3])
    victim.write_bytes(victim.read_bytes()[:300])
    capsys.readouterr()
    assert data_utils.main(["cache", "--data-root", str(own), "--out", str(out), "--quiet"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if "error: " in x]
    assert len(err) == 1 and err[0].startswith(f"data_utils.py cache: error: {victim}: "), err
    assert data_utils.main(["cache", "--data-root", str(own), "--out", str(out), "--quiet", "--skip-bad"]) == 0
    again = WavCache(out)
    assert len(again) == len(files) - 1 and len(again.skipped) == 1 and again.skipped[0].startswith(f"{victim}: ")


def test_resume_with_augmentation_is_bit_identical(vox2, vox1, noise, tmp_path):
    classes = DEV + SPEAKERS - TEST_SPEAKERS               # VoxCeleb2 dev + VoxCeleb1's training speakers
    solver = tiny_solver(tmp_path, classes, max_iter=8, snapshot=4, prefix="aug")
    roots = [vox1, vox2]
    full, cut, plain = tmp_path / "full", tmp_path / "cut", tmp_path / "plain"
    assert trainAug.main(train_args(solver, roots, full, *noise, "--noise-prob", "0.8", "--rir-prob", "0.5")) == 0
    assert trainAug.main(train_args(solver, roots, cut, *noise, "--noise-prob", "0.8", "--rir-prob", "0.5")) == 0
    # as after a kill just before the last snapshot: resume from iteration 4 (with 2 loader workers this time)
    for f in (cut / "snapshots").glob("aug_iter_8.*"):
        f.unlink()
    (cut / "final.caffemodel").unlink()
    assert trainAug.main(train_args(solver, roots, cut, *noise, "--noise-prob", "0.8", "--rir-prob", "0.5",
                                    "--resume", "auto", "--workers", "2")) == 0
    assert "training list: " in (cut / "train.log").read_text()       # read back from the run directory
    a, b = params_of(full / "final.caffemodel"), params_of(cut / "final.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert trainAug.main(train_args(solver, roots, plain)) == 0       # the augmentation changed the training
    c = params_of(plain / "final.caffemodel")
    assert not np.array_equal(a["fc5"][0], c["fc5"][0])


@pytest.mark.slow
def test_data_parallel_with_augmentation_trains_on_the_rows_of_one_process(vox2, noise, tmp_path):
    """torchrun with 2 gloo processes and noise + RIR augmentation: each process's batch rows are, bit for bit,
    its half of the batch one process trains on (every draw made for every row, only the own rows read and
    augmented). test_ddp.py checks that equal batches give equal weights."""
    solver = tiny_solver(tmp_path, DEV, max_iter=4, snapshot=0, prefix="dp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    runs = {}
    for name, launch in (("single", []), ("ddp", ["-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                                                 "--nproc_per_node=2"])):
        events = tmp_path / f"{name}_events"
        events.mkdir()
        cmd = [sys.executable, *launch, "-m", "tests.hooked_run", "--ddp-events", str(events), "--",
               *train_args(solver, [vox2], tmp_path / name, *noise)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)      # a hang guard only
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = [np.load(events / f"batches-rank{r}.npz") for r in ((0,) if name == "single" else (0, 1))]
    assert "data parallel: 2 processes (gloo), 3 examples per process" in (tmp_path / "ddp" / "train.log").read_text()
    (one,), (r0, r1) = runs["single"], runs["ddp"]
    assert sorted(one.files) == sorted(r0.files) == sorted(r1.files) == sorted(
        f"{kind}{k}" for kind in ("crops", "labels") for k in range(4))
    for key in one.files:
        assert r0[key].shape[0] == r1[key].shape[0] == one[key].shape[0] // 2
        np.testing.assert_array_equal(np.concatenate([r0[key], r1[key]]), one[key], err_msg=key)
    splits = training_splits([str(vox2)], "verification")
    clean = TrainBatches(splits.abspaths(splits.train), splits.train.labels, batch_size=6, frames=FRAMES,
                         seed=3).batch(0)
    np.testing.assert_array_equal(clean[1], one["labels0"])       # the same draws of utterances ...
    assert not np.array_equal(clean[0], one["crops0"])             # ... and the augmentation changed the crops
