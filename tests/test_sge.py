"""The sge/ job scripts under a real Grid Engine (sge/local-cluster.sh up): the two-stage recipe through
qsub (both stages' snapshots, evaluation results); a stage-1 job deleted with qdel that snapshots on SIGUSR2
and, resubmitted, ends with the weights of an uninterrupted run; a job requeued by its soft run-time limit;
a stage 2 without stage-1 weights kept in error state; the torchrun/parallel-environment job (CPU).

Needs a running cluster (`sudo sge/local-cluster.sh up`); skipped with the reason otherwise. Jobs run as an
ordinary user: as root the tests submit as $SGE_TEST_USER (default sgeuser, created by local-cluster.sh)
through `su`; as anyone else, as themselves. Everything the jobs touch lives in a temporary folder that
user owns: a copy of the code the jobs run (sge/, the scripts, the packages), a tiny synthetic corpus
and the run directories. The nets are the tiny stand-ins in tests/data/sge/ (seconds per stage).

Environment: SGE_TEST_USER (job user when root), SGE_TEST_TIMEOUT (seconds per wait for jobs, default 300),
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
JOB_TIMEOUT = float(os.environ.get("SGE_TEST_TIMEOUT", "300"))  # seconds per wait for jobs
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

    def accounting(self, job_id: str, timeout: float = 60) -> dict[str, str]:
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
                   check=True, capture_output=True, timeout=300)
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


def _long_solver(cluster, work) -> Path:
    """The tiny stage-1 solver, 300 iterations with a snapshot every 20, net by absolute path."""
    solver = work["root"] / "solver_long.prototxt"
    text = (DATA / "solver_softmax.prototxt").read_text()
    text = re.sub(r'net: "[^"]*"', f'net: "{work["repo"]}/tests/data/sge/tiny_softmax.prototxt"', text)
    text = re.sub(r"max_iter: \d+", "max_iter: 300", text)
    text = re.sub(r"snapshot: \d+", "snapshot: 20", text)
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
    solver = _long_solver(cluster, work)
    interrupted, reference = work["runs"] / "interrupted", work["runs"] / "uninterrupted"

    def submit(name, run):
        return cluster.qsub(f"-N {name} -o {logs}/ sge/train.sge {solver} --out {run} {_common(work)}", cwd=repo)

    j_ref = submit("uninterrupted", reference)
    j_int = submit("interrupted", interrupted)
    _wait_for_file(cluster, j_int, interrupted / "snapshots" / "tiny_softmax_iter_20.caffemodel", logs)
    cluster.sh(f"qdel {j_int}")
    t_qdel = time.monotonic()
    cluster.wait([j_int], logs=logs)
    waited = time.monotonic() - t_qdel
    rec = cluster.accounting(j_int)
    assert rec["exit_status"].split()[0] == "99", (rec, _logs(logs))  # snapshot written, not killed
    log = _train_log(interrupted)
    m = re.search(r"stopped by SIGUSR2 at iteration (\d+); snapshot (\S+)", log)
    assert m, log[-3000:]
    stop_iter = int(m.group(1))
    assert 20 <= stop_iter < 300, stop_iter
    assert (interrupted / "snapshots" / f"tiny_softmax_iter_{stop_iter}.solverstate").exists()
    assert (interrupted / "snapshots" / f"tiny_softmax_iter_{stop_iter}.caffemodel").exists()
    assert not (interrupted / "final.caffemodel").exists()
    assert waited < 60, f"the job took {waited:.0f} s to end after qdel (killed at the notify time?)"
    job_log = next(logs.glob(f"interrupted.o{j_int}")).read_text()
    assert "got SIGUSR2" in job_log and "exiting 99" in job_log, job_log

    j_res = submit("interrupted", interrupted)  # the user's resubmission: the same command
    cluster.wait([j_res, j_ref], logs=logs)
    for j in (j_res, j_ref):
        assert cluster.accounting(j)["exit_status"].split()[0] == "0", _logs(logs)
    assert f"tiny_softmax_iter_{stop_iter}.solverstate" in _train_log(interrupted).split(m.group(0), 1)[1]

    diff, scale = _weight_diff(interrupted / "final.caffemodel", reference / "final.caffemodel")
    print(f"\nstopped at iteration {stop_iter} of 300 by qdel; resumed vs uninterrupted final weights: "
          f"max |diff| = {diff:.3g} (max |w| = {scale:.3g})")
    (work["runs"] / "resume_diff.txt").write_text(
        f"stop_iter {stop_iter}\nmax_abs_diff {diff!r}\nmax_abs_w {scale!r}\n")
    assert diff <= 1e-6 * scale, diff


def test_soft_runtime_limit_requeues_and_resumes(cluster, work):
    """-l s_rt: SIGUSR1 -> snapshot -> exit 99 -> Grid Engine requeues the job (Rq, then $RESTARTED=1),
    and the requeued run continues from the snapshot to the end.

    The first run must outlast s_rt whatever the machine's speed: it starts with max_iter 10^6; while the
    requeued job waits (held with qhold), the solver's max_iter is cut to 40 past the snapshot and s_rt is
    dropped (qalter -l), so the second run ends."""
    repo, runs, logs = work["repo"], work["runs"], work["logs"]
    solver = work["root"] / "solver_srt.prototxt"
    template = (DATA / "solver_softmax.prototxt").read_text()
    template = re.sub(r'net: "[^"]*"', f'net: "{repo}/tests/data/sge/tiny_softmax.prototxt"', template)
    template = re.sub(r"snapshot: \d+", "snapshot: 100000", template)

    def write_solver(max_iter):
        solver.write_text(re.sub(r"max_iter: \d+", f"max_iter: {max_iter}", template))
        if os.geteuid() == 0:
            os.chown(solver, pwd.getpwnam(cluster.user).pw_uid, -1)

    write_solver(1_000_000)
    run = runs / "srt"
    j = cluster.qsub(f"-N srt -o {logs}/ -l s_rt=0:0:20,h_rt=0:3:0 sge/train.sge {solver} --out {run} "
                     f"--data-root {work['corpus']} --gpu -1 --seed 5 --test-interval 0 --no-progress "
                     f"--workers {WORKERS}", cwd=repo)
    handled = 0
    t0 = time.monotonic()
    while cluster.pending([j]):
        state = cluster.state(j) or ""
        assert not state.startswith("E"), cluster.sh(f"qstat -j {j}").stdout + _logs(logs)
        assert time.monotonic() - t0 < JOB_TIMEOUT, f"job {j} still in the queue:\n{_logs(logs)}"
        log = _train_log(run) if (run / "train.log").exists() else ""
        stops = [int(i) for i in re.findall(r"stopped by SIGUSR1 at iteration (\d+)", log)]
        if len(stops) > handled and state in ("Rq", "Rqw", "qw"):
            cluster.sh(f"qhold {j}")
            write_solver(stops[-1] + 40)
            cluster.sh(f"qalter -l h_rt=0:3:0 {j}")
            cluster.sh(f"qrls {j}")
            handled = len(stops)
        time.sleep(0.5)
    log = _train_log(run)
    stops = [int(i) for i in re.findall(r"stopped by SIGUSR1 at iteration (\d+)", log)]
    resumes = [int(i) for i in re.findall(r"resuming from \S+_iter_(\d+)\.solverstate", log)]
    assert stops and resumes == stops, (stops, resumes, log[-3000:])
    assert "Optimization Done" in log, log[-3000:]
    assert (run / "final.caffemodel").exists()
    assert (run / "snapshots" / f"tiny_softmax_iter_{stops[-1] + 40}.caffemodel").exists()
    job_log = next(logs.glob(f"srt.o{j}")).read_text()
    assert "restarted=1" in job_log and job_log.rstrip().endswith("training finished"), job_log
    t0 = time.monotonic()
    while True:  # one accounting record per run; the last one is written shortly after the job left qstat
        out = cluster.sh(f"qacct -j {j}", check=False).stdout
        status = re.findall(r"^exit_status\s+(\d+)", out, re.M)
        if len(status) > len(stops) or time.monotonic() - t0 > 60:
            break
        time.sleep(1)
    assert status == ["99"] * len(stops) + ["0"], out
    print(f"\ns_rt: stopped at iteration {stops} by SIGUSR1, requeued, resumed, finished")


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
            assert time.monotonic() - t0 < 300, cluster.sh("qstat -u '*'").stdout
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
    solver = _long_solver(cluster, work)
    run, reference = work["runs"] / "multiproc", work["runs"] / "uninterrupted"
    args = f"-N multiproc -pe smp 2 -o {logs}/ sge/train_multigpu.sge {solver} --out {run} {_common(work)}"
    ids = []
    if not (reference / "final.caffemodel").exists():  # this test alone: make the reference too
        ids.append(cluster.qsub(f"-N uninterrupted -o {logs}/ sge/train.sge {solver} --out {reference} "
                                f"{_common(work)}", cwd=repo))
    j = cluster.qsub(args, cwd=repo)
    _wait_for_file(cluster, j, run / "snapshots" / "tiny_softmax_iter_20.caffemodel", logs)
    cluster.sh(f"qdel {j}")
    cluster.wait([j], logs=logs)
    assert cluster.accounting(j)["exit_status"].split()[0] == "99", _logs(logs)
    log = _train_log(run)
    assert "data parallel: 2 processes" in log, log[:2000]
    m = re.search(r"stopped by SIGUSR2 at iteration (\d+)", log)
    assert m, log[-3000:]
    j2 = cluster.qsub(args, cwd=repo)
    cluster.wait([j2, *ids], logs=logs)
    assert cluster.accounting(j2)["exit_status"].split()[0] == "0", _logs(logs)
    assert f"resuming from {run}/snapshots/tiny_softmax_iter_{m.group(1)}.solverstate" in _train_log(run)
    diff, scale = _weight_diff(run / "final.caffemodel", reference / "final.caffemodel")
    print(f"\n2 processes, stopped at iteration {m.group(1)} by qdel, resumed; vs 1 process uninterrupted: "
          f"max |diff| = {diff:.3g} (max |w| = {scale:.3g})")
    assert diff <= 1e-5 * scale, diff
