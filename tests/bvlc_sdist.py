"""Files of the BVLC Caffe sdist that caffe_build/build.sh downloads (its pycaffe test suite, its model-zoo
prototxt), for tests that run them against caffe_torch. Never copied into the repository: taken from the
build's extracted source tree (third_party/caffe/src), else extracted from the build's cached tarball
(${XDG_CACHE_HOME:-~/.cache}/hypersphere-caffe/sdist/), else absent (the tests then skip)."""

import os
import re
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "caffe_build" / "build.sh"


def _sdist_name() -> str:
    """"<name>-<version>" of the sdist, as build.sh pins it (SDIST_NAME=..., SDIST_VERSION=...)."""
    text = BUILD_SCRIPT.read_text()
    name = re.search(r"^SDIST_NAME=(\S+)", text, re.M).group(1)
    version = re.search(r"^SDIST_VERSION=(\S+)", text, re.M).group(1)
    return f"{name}-{version}"


def cached_tarball() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hypersphere-caffe" / "sdist" / f"{_sdist_name()}.tar.gz"


def sdist_path(relative: str, scratch: Path | None = None) -> Path | None:
    """The sdist's file or folder `relative` (e.g. "python/caffe/test"): in the build's source tree, else
    extracted from the cached tarball under `scratch` (default: a new temporary folder); None when neither
    exists."""
    built = ROOT / "third_party" / "caffe" / "src" / relative
    if built.exists():
        return built
    tarball = cached_tarball()
    if not tarball.is_file():
        return None
    prefix = f"{_sdist_name()}/{relative}"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name == prefix or m.name.startswith(prefix + "/")]
        if not members:
            return None
        scratch = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="bvlc-sdist-"))
        tar.extractall(scratch, members=members, filter="data")
    return scratch / _sdist_name() / relative
