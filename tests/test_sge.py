"""The sge/ job scripts under a real Grid Engine (sge/local-cluster.sh up): the two-stage recipe through
qsub (both stages' snapshots, evaluation results); a stage-1 job deleted with qdel that snapshots on SIGUSR2
and, resubmitted, ends with the weights of an uninterrupted run; a job requeued by its soft run-time limit;
a stage 2 without stage-1 weights kept in error state; the torchrun/parallel-environment job (CPU).

Needs a running cluster (`sudo sge/local-cluster.sh up`); skipped with the reason otherwise. Jobs run as an
ordinary user: as root the tests submit as $SGE_TEST_USER (default sgeuser, created by local-cluster.sh)
through `su`; as anyone else, as themselves. Everything the jobs touch lives in a temporary folder that
user owns: a copy of the code the jobs run (sge/, the scripts, the packages), a tiny synthetic corpus
and the run directories. The nets are the tiny stand-ins in tests/data/sge/ (seconds per stage).

No outcome depends on the machine's speed: every wait is for an event (a file, a job state, a log line), and
SGE_TEST_TIMEOUT only guards against a hang (a job that never ends): it is generous on purpose.

Environment: SGE_TEST_USER (job user when root), SGE_TEST_TIMEOUT (hang guard: the most seconds any one wait
for jobs may take, default 1800),
SGE_TEST_WORKERS (trainAug.py --workers, default 1: the multi-process loader, whose workers also receive
Grid Engine's signals), SGE_TEST_TMP (where the work folder goes, default /tmp), SGE_TEST_KEEP=1 (keep it).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.sge, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "sge"
SGE_ENV = {"SGE_ROOT": os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
           "SGE_CELL": os.environ.get("SGE_CELL", "default")}
JOB_TIMEOUT = float(os.environ.get("SGE_TEST_TIMEOUT", "1800"))  # hang guard: seconds per wait for jobs
WORKERS = os.environ.get("SGE_TEST_WORKERS", "1")  # trainAug.py --workers: 1 = the multi-process loader
COPY = ["trainAug.py", "trainNoAug.py", "test_identification.py", "test_verification.py", "data_utils.py",
        "caffe_torch", "speaker", "voxdata", "sge", "lists", "tests/data/sge"]


# ----------------------------------------------------------------------------------------------- helpers

class Cluster:
    """Runs Grid Engine commands as the job user (through su when we are root)."""

    def __init__(self, user: str, python: str, pythonpath: str | None):
        self.user = user
        self.python = python
        self.pythonpath = pythonpath
        self.submitted: list[str] = []  # deleted at the end if still there (a failed test leaves none)

    def sh(self, cmd: str, cwd: Path | str = "/", check: bool = True, timeout: float = 120):
        env_prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in SGE_ENV.items())
        line = f"cd {shlex.quote(str(cwd))} && export {env_prefix} PATH=$PATH:/usr/bin && {cmd}"
        if os.geteuid() == 0:
            argv = ["su", self.user, "-s", "/bin/bash", "-c", line]
        else:
            argv = ["bash", "-c", line]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"command failed ({r.returncode}): {cmd}\n"
                                 f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    def qsub_env(self) -> str:
        """The -v list that gives the jobs an interpreter the job user can run."""
        env = f"PYTHON={self.python}"
        if self.pythonpath:
            env += f",PYTHONPATH={self.pythonpath}"
        return env

    def qsub(self, args: str, cwd: Path) -> str:
        out = self.sh(f"qsub -terse -v {self.qsub_env()} {args}", cwd=cwd).stdout.strip()
        self.submitted.append(out.split(".")[0])
        return out.split(".")[0]

    def cleanup(self) -> None:
        left = sorted(self.pending(self.submitted))
        if left:
            self.sh(f"qdel {' '.join(left)}", check=False)

    def pending(self, job_ids) -> set[str]:
        out = self.sh("qstat -u '*'", check=False).stdout
        present = {line.split()[0] for line in out.splitlines()[2:] if line.split()}
        return set(job_ids) & present

    def state(self, job_id: str) -> str | None:
        for line in self.sh("qstat -u '*'", check=False).stdout.splitlines()[2:]:
            f = line.split()
            if f and f[0] == job_id:
                return f[4]
        return None

    def wait(self, job_ids, timeout: float = JOB_TIMEOUT, logs: Path | None = None) -> None:
        t0 = time.monotonic()
        while self.pending(job_ids):
            for j in job_ids:
                if (self.state(j) or "").startswith("E"):
                    raise AssertionError(f"job {j} is in error state:\n{self.sh(f'qstat -j {j}').stdout}\n"
                                         f"{_logs(logs)}")
            if time.monotonic() - t0 > timeout:
                qstat = self.sh("qstat -u '*'", check=False).stdout
                raise AssertionError(f"jobs {sorted(self.pending(job_ids))} still queued/running after "
                                     f"{timeout:.0f} s:\n{qstat}\n{_logs(logs)}")
            time.sleep(1)

    def accounting(self, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
        """qacct's record of a finished job (written shortly after the job leaves qstat)."""
        t0 = time.monotonic()
        while True:
            r = self.sh(f"qacct -j {job_id}", check=False)
            if r.returncode == 0 and "exit_status" in r.stdout:
                rec = {}
                for line in r.stdout.splitlines():
                    parts = line.split(None, 1)
                    if len(parts) == 2:
                        rec[parts[0]] = parts[1].strip()
                return rec
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"no accounting record for job {job_id}: {r.stdout}{r.stderr}")
            time.sleep(1)


def _logs(folder: Path | None) -> str:
    if folder is None or not folder.is_dir():
        return ""
    return "\n".join(f"==== {p}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(folder.iterdir()))


def _why_no_cluster() -> str | None:
    if shutil.which("qstat") is None and not Path("/usr/bin/qstat").exists():
        return "Grid Engine client (qstat) not installed: run `sudo sge/local-cluster.sh up`"
    env = {**os.environ, **SGE_ENV}
    try:
        r = subprocess.run(["qstat", "-f"], capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"qstat failed ({exc}): run `sudo sge/local-cluster.sh up`"
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip()
        return f"no Grid Engine answering qstat ({msg}): run `sudo sge/local-cluster.sh up`"
    if not re.search(r"^\S+@\S+\s+\S+\s+\d+/\d+/\d+", r.stdout, re.M):
        return "Grid Engine is up but has no queue instance: run `sudo sge/local-cluster.sh up`"
    return None


def _job_user() -> str | None:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    name = os.environ.get("SGE_TEST_USER", "sgeuser")
    try:
        pwd.getpwnam(name)
    except KeyError:
        return None
    return name


def _interpreter(cl: Cluster) -> tuple[str, str | None] | None:
    """An interpreter with this project's packages that the job user can run: this one, or (when it sits
    where that user cannot read, e.g. under /root) the system python3 of the same version with our
    site-packages on PYTHONPATH."""
    probe = "import torch, numpy, google.protobuf, soundfile"
    candidates = [(sys.executable, None)]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    sp = os.pathsep.join(p for p in site.getsitepackages() if os.path.isdir(p))
    for exe in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(exe):
            candidates.append((exe, sp))
    for exe, path in candidates:
        env = f"PYTHONPATH={shlex.quote(path)} " if path else ""
        if cl.sh(f"{env}{shlex.quote(exe)} -c {shlex.quote(probe)}", check=False).returncode == 0:
            return exe, path
    return None


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cluster():
    why = _why_no_cluster()
    if why:
        pytest.skip(why)
    user = _job_user()
    if user is None:
        pytest.skip("running as root and the job user $SGE_TEST_USER (default sgeuser) does not exist: "
                    "`sudo sge/local-cluster.sh up` creates it")
    cl = Cluster(user, sys.executable, None)
    found = _interpreter(cl)
    if found is None:
        pytest.skip(f"no python interpreter with the project's packages that user {user} can run")
    cl.python, cl.pythonpath = found
    yield cl
    cl.cleanup()


@pytest.fixture(scope="module")
def work(cluster):
    """A folder owned by the job user: a copy of the code the jobs run, a tiny corpus, runs/.
    Under $SGE_TEST_TMP (default /tmp: pytest's own tmp folders are private to us); removed afterwards
    unless SGE_TEST_KEEP=1."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="sge-test-", dir=os.environ.get("SGE_TEST_TMP", "/tmp")))
    root.chmod(0o755)
    repo = root / "repo"
    for rel in COPY:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, repo / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    corpus = root / "corpus"
    subprocess.run([sys.executable, str(REPO / "data_utils.py"), "synth", "--out", str(corpus),
                    "--speakers", "6", "--utterances", "8", "--test-speakers", "2",
                    "--min-videos", "3", "--max-videos", "3",
                    "--min-dur", "1.5", "--max-dur", "2.5", "--trials", "40", "--seed", "3", "--quiet"],
                   check=True, capture_output=True, timeout=JOB_TIMEOUT)     # (hang guard)
    (root / "runs" / "logs").mkdir(parents=True)
    if os.geteuid() == 0:
        uid, gid = pwd.getpwnam(cluster.user).pw_uid, pwd.getpwnam(cluster.user).pw_gid
        for dirpath, _dirnames, filenames in os.walk(root):
            os.chown(dirpath, uid, gid)
            for f in filenames:
                os.chown(os.path.join(dirpath, f), uid, gid)
    yield {"root": root, "repo": repo, "corpus": corpus, "runs": root / "runs",
           "logs": root / "runs" / "logs"}
    cluster.cleanup()  # no job may outlive its folder
    if os.environ.get("SGE_TEST_KEEP") == "1":
        print(f"\nkept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def _caffemodel_params(path: Path) -> dict[str, list[np.ndarray]]:
    sys.path.insert(0, str(REPO))
    from caffe_torch.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    layers = list(net.layer) or list(net.layers)
    out = {}
    for layer in layers:
        blobs = []
        for b in layer.blobs:
            data = np.asarray(b.double_data if len(b.double_data) else b.data, dtype=np.float64)
            blobs.append(data)
        if blobs:
            out[layer.name] = blobs
    assert out, f"{path}: no learnable blobs"
    return out


def _train_log(run: Path) -> str:
    return (run / "train.log").read_text(errors="replace")


def _long_solver(cluster, work, max_iter: int = 10**6, snapshot: int = 20, name: str = "solver_long") -> Path:
    """The tiny stage-1 solver with `max_iter` iterations and a snapshot every `snapshot`, net by absolute
    path. Its lr_policy ("step") does not depend on max_iter, so a run stopped at iteration s of 10^6 and
    resumed with max_iter s + 40 follows the trajectory of an uninterrupted run of s + 40: the tests stop
    runs that cannot have finished, whatever the machine's speed, and only then fix where they end."""
    solver = work["root"] / f"{name}.prototxt"
    text = (DATA / "solver_softmax.prototxt").read_text()
    assert 'lr_policy: "step"' in text
    text = re.sub(r'net: "[^"]*"', f'net: "{work["repo"]}/tests/data/sge/tiny_softmax.prototxt"', text)
    text = re.sub(r"max_iter: \d+", f"max_iter: {max_iter}", text)
    text = re.sub(r"snapshot: \d+", f"snapshot: {snapshot}", text)
    solver.write_text(text)
    if os.geteuid() == 0:
        os.chown(solver, pwd.getpwnam(cluster.user).pw_uid, -1)
    return solver


def _common(work) -> str:
    return f"--data-root {work['corpus']} --gpu -1 --seed 5 --test-interval 0 --no-progress --workers {WORKERS}"


def _wait_for_file(cluster, job: str, path: Path, logs: Path) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert cluster.pending([job]), f"job {job} ended before writing {path}:\n{_logs(logs)}"
        assert time.monotonic() - t0 < JOB_TIMEOUT, f"no {path} after {JOB_TIMEOUT} s:\n{_logs(logs)}"
        time.sleep(0.2)


def _weight_diff(a_path: Path, b_path: Path) -> tuple[float, float]:
    """(max |a - b| over all learnable blobs, max |b|)."""
    a, b = _caffemodel_params(a_path), _caffemodel_params(b_path)
    assert a.keys() == b.keys()
    diff = max(float(np.max(np.abs(x - y))) for k in a for x, y in zip(a[k], b[k], strict=True))
    scale = max(float(np.max(np.abs(y))) for k in b for y in b[k])
    return diff, scale


# ------------------------------------------------------------------------------------------------- tests

def test_recipe_two_stages_and_tests_through_qsub(cluster, work):
    """sge/recipe.sh: stage 1 -> stage 2 (-hold_jid, from stage 1's final weights) -> iden + veri tests."""
    repo, runs, logs = work["repo"], work["runs"], work["logs"]
    cmd = (f"sge/recipe.sh --data-root {work['corpus']} --runs {runs} --name tiny "
           f"--stage1 tests/data/sge/solver_softmax.prototxt --stage2 tests/data/sge/solver_lm.prototxt "
           f"--test-args '--crops 2 --gpu -1' --qsub-args '-v {cluster.qsub_env()}' "
           f"-- --gpu -1 --seed 1 --test-interval 0 --no-progress --workers {WORKERS}")
    out = cluster.sh(cmd, cwd=repo).stdout
    ids = re.findall(r"job (\d+)", out)
    cluster.submitted += ids
    assert len(ids) == 4, out
    j1, j2, j_iden, j_veri = ids
    qstat = cluster.sh("qstat -u '*'").stdout
    print(f"\n$ {cmd}\n{out}\n$ qstat\n{qstat}")
    (runs / "recipe_qstat.txt").write_text(f"$ {cmd}\n{out}\n$ qstat\n{qstat}")
    states = {line.split()[0]: line.split()[4] for line in qstat.splitlines()[2:] if line.split()}
    for held in (j2, j_iden, j_veri):  # dispatched only after their predecessor: held now
        assert states.get(held, "").startswith("hqw"), (held, qstat)

    cluster.wait(ids, logs=logs)
    acct = {j: cluster.accounting(j) for j in ids}
    for j, rec in acct.items():
        assert rec["exit_status"].split()[0] == "0", (j, rec, _logs(logs))
        assert rec["failed"].split()[0] == "0", (j, rec)

    def t(rec, key):
        return time.mktime(time.strptime(rec[key], "%a %b %d %H:%M:%S %Y"))

    assert t(acct[j2], "start_time") >= t(acct[j1], "end_time")
    for j in (j_iden, j_veri):
        assert t(acct[j], "start_time") >= t(acct[j2], "end_time")

    s1, s2 = runs / "tiny_stage1", runs / "tiny_stage2"
    for run, prefix, max_iter in ((s1, "tiny_softmax", 60), (s2, "tiny_lm", 30)):
        snaps = sorted(p.name for p in (run / "snapshots").glob("*.caffemodel"))
        assert snaps == sorted(f"{prefix}_iter_{i}.caffemodel" for i in range(10, max_iter + 1, 10)), snaps
        assert (run / "final.caffemodel").read_bytes() == \
            (run / "snapshots" / f"{prefix}_iter_{max_iter}.caffemodel").read_bytes()
    # stage 2 started from stage 1's final weights (resolved by the job when it started)
    assert f"initialising from {s1}/final.caffemodel" in _train_log(s2)
    p1 = _caffemodel_params(s1 / "final.caffemodel")
    p2 = _caffemodel_params(s2 / "final.caffemodel")
    assert p1["fc6"][0].shape == p2["fc6"][0].shape
    # evaluation results of the stage-2 net, written to its run directory
    import json

    iden = json.loads((s2 / "identification.json").read_text())
    veri = json.loads((s2 / "verification.json").read_text())
    flat = json.dumps(iden)
    assert re.search(r"top.?1", flat, re.I) and re.search(r"top.?5", flat, re.I), flat
    assert "eer" in json.dumps(veri).lower(), veri
    s1_log = next(logs.glob(f"tiny_s1.o{j1}")).read_text()
    assert "training finished" in s1_log


def test_qdel_snapshot_and_resubmission_match_uninterrupted(cluster, work):
    """A stage-1 job deleted with qdel after its first periodic snapshot writes a snapshot on SIGUSR2 (from
    -notify) and exits 99; the same qsub again resumes (--resume auto) and ends with the weights of an
    uninterrupted run."""
    repo, logs = work["repo"], work["logs"]
    interrupted, reference = work["runs"] / "interrupted", work["runs"] / "uninterrupted"

    def submit(name, run, solver):
        return cluster.qsub(f"-N {name} -o {logs}/ sge/train.sge {solver} --out {run} {_common(work)}", cwd=repo)

    j_int = submit("interrupted", interrupted, _long_solver(cluster, work))      # 10^6 iterations: still running
    _wait_for_file(cluster, j_int, interrupted / "snapshots" / "tiny_softmax_iter_20.caffemodel", logs)
    cluster.sh(f"qdel {j_int}")
    cluster.wait([j_int], logs=logs)
    rec = cluster.accounting(j_int)
    # 99: the trainer wrote its snapshot and exited; killed at the notify time it would be 137
    assert rec["exit_status"].split()[0] == "99", (rec, _logs(logs))
    log = _train_log(interrupted)
    m = re.search(r"stopped by SIGUSR2 at iteration (\d+); snapshot (\S+)", log)
    assert m, log[-3000:]
    stop_iter = int(m.group(1))
    assert stop_iter >= 20, stop_iter
    assert (interrupted / "snapshots" / f"tiny_softmax_iter_{stop_iter}.solverstate").exists()
    assert (interrupted / "snapshots" / f"tiny_softmax_iter_{stop_iter}.caffemodel").exists()
    assert not (interrupted / "final.caffemodel").exists()
    job_log = next(logs.glob(f"interrupted.o{j_int}")).read_text()
    assert "got SIGUSR2" in job_log and "exiting 99" in job_log, job_log

    # the user's resubmission (the same command, its solver now ending 40 iterations after the stop) and
    # the uninterrupted reference with that solver
    solver = _long_solver(cluster, work, max_iter=stop_iter + 40, name="solver_qdel")
    j_res = submit("interrupted", interrupted, solver)
    j_ref = submit("uninterrupted", reference, solver)
    cluster.wait([j_res, j_ref], logs=logs)
    for j in (j_res, j_ref):
        assert cluster.accounting(j)["exit_status"].split()[0] == "0", _logs(logs)
    assert f"tiny_softmax_iter_{stop_iter}.solverstate" in _train_log(interrupted).split(m.group(0), 1)[1]

    diff, scale = _weight_diff(interrupted / "final.caffemodel", reference / "final.caffemodel")
    print(f"\nstopped at iteration {stop_iter} by qdel; resumed to {stop_iter + 40} vs uninterrupted final weights: "
          f"max |diff| = {diff:.3g} (max |w| = {scale:.3g})")
    (work["runs"] / "resume_diff.txt").write_text(
        f"stop_iter {stop_iter}\nmax_abs_diff {diff!r}\nmax_abs_w {scale!r}\n")
    assert diff <= 1e-6 * scale, diff


def test_soft_runtime_limit_requeues_and_resumes(cluster, work):
    """-l s_rt: SIGUSR1 -> snapshot -> exit 99 -> Grid Engine requeues the job (Rq, then $RESTARTED=1),
    and the requeued run continues from the snapshot to the end.

    Every step waits for an event, none for a speed: the first run trains 10^6 iterations, so it is still
    running when s_rt sends SIGUSR1; once it runs, the job is put on hold, so that when it has stopped and
    Grid Engine has requeued it, it waits (held) for the test; then its solver is cut to 40 iterations past
    the last snapshot, the soft limit is replaced by no limit (qalter -l h_rt=INFINITY), and it is released
    to run to the end however long that takes."""
    repo, runs, logs = work["repo"], work["runs"], work["logs"]
    run = runs / "srt"
    solver = _long_solver(cluster, work, snapshot=100000, name="solver_srt")
    j = cluster.qsub(f"-N srt -o {logs}/ -l s_rt=0:0:30 sge/train.sge {solver} --out {run} {_common(work)}",
                     cwd=repo)

    def wait_until(done, what):
        t0 = time.monotonic()
        while not done(cluster.state(j) or ""):
            assert cluster.pending([j]), f"job {j} left the queue before {what}:\n{_logs(logs)}"
            assert time.monotonic() - t0 < JOB_TIMEOUT, f"job {j}: no {what} after {JOB_TIMEOUT} s (hang guard)"
            time.sleep(0.5)

    wait_until(lambda state: "r" in state, "first run")           # running ('r'): hold its requeue
    cluster.sh(f"qhold {j}")
    # held and waiting again: the run was stopped by s_rt and the job requeued (its state says so: 'R')
    wait_until(lambda state: state.startswith("h") and "R" in state and "r" not in state, "held requeue")
    # the iteration of its snapshot (none when SIGUSR1 came before the first iteration: a very slow start)
    stops = [int(i) for i in re.findall(r"stopped by SIGUSR1 at iteration (\d+)", _train_log(run))]
    last = stops[-1] if stops else 0
    _long_solver(cluster, work, max_iter=last + 40, snapshot=100000, name="solver_srt")
    cluster.sh(f"qalter -l h_rt=INFINITY {j}")                   # replaces the whole list: s_rt is gone
    cluster.sh(f"qrls {j}")
    cluster.wait([j], logs=logs)

    log = _train_log(run)
    resumes = [int(i) for i in re.findall(r"resuming from \S+_iter_(\d+)\.solverstate", log)]
    assert resumes == stops, (stops, resumes, log[-3000:])
    assert "Optimization Done" in log, log[-3000:]
    assert (run / "final.caffemodel").exists()
    assert (run / "snapshots" / f"tiny_softmax_iter_{last + 40}.caffemodel").exists()
    job_log = next(logs.glob(f"srt.o{j}")).read_text()
    assert "restarted=1" in job_log and job_log.rstrip().endswith("training finished"), job_log
    assert job_log.count("exiting 99") == 1, job_log             # one stopped run: held at its requeue
    t0 = time.monotonic()
    while True:  # one accounting record per run; the last one is written shortly after the job left qstat
        out = cluster.sh(f"qacct -j {j}", check=False).stdout
        status = re.findall(r"^exit_status\s+(\d+)", out, re.M)
        if len(status) > 1:
            break
        assert time.monotonic() - t0 < JOB_TIMEOUT, out              # hang guard
        time.sleep(1)
    assert status == ["99", "0"], out
    print(f"\ns_rt: stopped {'at iteration ' + str(last) if stops else 'before iteration 1'} by SIGUSR1, "
          "requeued, resumed, finished")


def test_stage2_without_stage1_weights_stays_in_error_state(cluster, work):
    """A stage-2 job whose stage-1 run has no final weights (stage 1 failed or was deleted: -hold_jid
    released it anyway) must not train from scratch: it exits 100 -> error state Eqw, which also keeps the
    tests held on it."""
    repo, runs, logs = work["repo"], work["runs"], work["logs"]
    (runs / "never_finished" / "snapshots").mkdir(parents=True)
    if os.geteuid() == 0:
        uid = pwd.getpwnam(cluster.user).pw_uid
        for p in (runs / "never_finished", runs / "never_finished" / "snapshots"):
            os.chown(p, uid, -1)
    j2 = cluster.qsub(f"-N orphan_s2 -o {logs}/ sge/train.sge tests/data/sge/solver_lm.prototxt "
                      f"{runs}/never_finished --out {runs}/orphan --data-root {work['corpus']} --gpu -1",
                      cwd=repo)
    j3 = cluster.qsub(f"-N orphan_iden -o {logs}/ -hold_jid {j2} sge/test_identification.sge {runs}/orphan "
                      f"--data-root {work['corpus']}", cwd=repo)
    try:
        t0 = time.monotonic()
        while not (cluster.state(j2) or "").startswith("E"):
            assert cluster.pending([j2]), f"job {j2} ended instead of going into error state:\n{_logs(logs)}"
            assert time.monotonic() - t0 < JOB_TIMEOUT, cluster.sh("qstat -u '*'").stdout       # hang guard
            time.sleep(1)
        assert (cluster.state(j3) or "").startswith("hqw")
        assert "exit_status of job start = 100" in cluster.sh(f"qstat -j {j2}").stdout
        text = next(logs.glob(f"orphan_s2.o{j2}")).read_text()
        assert "has no final weights" in text, text
        assert not (runs / "orphan" / "snapshots").exists()
    finally:
        cluster.sh(f"qdel {j2} {j3}", check=False)


def test_multiprocess_pe_job_torchrun_qdel_and_resume(cluster, work):
    """sge/train_multigpu.sge under the parallel environment smp (2 slots): torchrun runs 2 training
    processes (on the CPU here: --gpu -1, gloo); qdel -> both stop at the same iteration, snapshot, exit
    99 -> the job exits 99; the resubmission resumes and ends with the weights of the single-process
    uninterrupted run up to float summation order."""
    r = cluster.sh("qconf -sp smp", check=False)
    m = re.search(r"^slots\s+(\d+)", r.stdout, re.M)
    if r.returncode != 0 or not m or int(m.group(1)) < 2:
        pytest.skip("no parallel environment 'smp' with 2 slots (sge/local-cluster.sh up creates it)")
    repo, logs = work["repo"], work["logs"]
    run, reference = work["runs"] / "multiproc", work["runs"] / "uninterrupted_1proc"

    def args(solver):
        return f"-N multiproc -pe smp 2 -o {logs}/ sge/train_multigpu.sge {solver} --out {run} {_common(work)}"

    j = cluster.qsub(args(_long_solver(cluster, work)), cwd=repo)       # 10^6 iterations: still running
    _wait_for_file(cluster, j, run / "snapshots" / "tiny_softmax_iter_20.caffemodel", logs)
    cluster.sh(f"qdel {j}")
    cluster.wait([j], logs=logs)
    assert cluster.accounting(j)["exit_status"].split()[0] == "99", _logs(logs)
    log = _train_log(run)
    assert "data parallel: 2 processes" in log, log[:2000]
    m = re.search(r"stopped by SIGUSR2 at iteration (\d+)", log)
    assert m, log[-3000:]
    solver = _long_solver(cluster, work, max_iter=int(m.group(1)) + 40, name="solver_multiproc")
    j2 = cluster.qsub(args(solver), cwd=repo)
    j_ref = cluster.qsub(f"-N uninterrupted -o {logs}/ sge/train.sge {solver} --out {reference} {_common(work)}",
                         cwd=repo)
    cluster.wait([j2, j_ref], logs=logs)
    assert cluster.accounting(j2)["exit_status"].split()[0] == "0", _logs(logs)
    assert f"resuming from {run}/snapshots/tiny_softmax_iter_{m.group(1)}.solverstate" in _train_log(run)
    diff, scale = _weight_diff(run / "final.caffemodel", reference / "final.caffemodel")
    print(f"\n2 processes, stopped at iteration {m.group(1)} by qdel, resumed; vs 1 process uninterrupted: "
          f"max |diff| = {diff:.3g} (max |w| = {scale:.3g})")
    assert diff <= 1e-5 * scale, diff
