#!/usr/bin/env bash
# Build real BVLC Caffe (PyPI sdist brocolli-caffe 9.0.2) with this project's C++ fork layers
# (MarginInnerProduct, happynear Normalize, InnerProduct.normalize, LabelSpecificAdd) and make
# `import caffe` in the project's virtual environment load it. CPU only. Idempotent.
#
#   bash caffe_build/build.sh            # or: make caffe
#
# Options: --force (rebuild even when up to date; ignores the cache), --no-apt (never call apt-get),
#          --no-cache (neither restore from nor save to the cache),
#          --no-pth (leave the venv's .pth alone: a second build beside the one `import caffe` loads;
#          use it with PYTHONPATH=$CAFFE_PREFIX/python).
# Environment: CAFFE_PYTHON (default .venv/bin/python), CAFFE_PREFIX (default third_party/caffe),
#              CAFFE_JOBS (default 2), XDG_CACHE_HOME (cache root, default ~/.cache).
# See caffe_build/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
APT_PACKAGES=(cmake g++ make patch libboost-system-dev libboost-thread-dev libboost-filesystem-dev
  libboost-python-dev libboost-regex-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev
  libgflags-dev libhdf5-dev libopenblas-dev
  liblmdb-dev libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev)
# Files of the sdist that this build deletes: the SSD Normalize layer (its type name clashes with
# the happynear Normalize of ours, which replaces it) and protobuf output generated in 2024 by
# another protoc, which must not shadow the one generated at build time.
REMOVE_FILES=(src/caffe/layers/normalize_layer.cpp src/caffe/layers/normalize_layer.cu
  include/caffe/layers/normalize_layer.hpp src/caffe/test/test_normalize_layer.cpp
  include/caffe/proto/caffe.pb.h src/caffe/proto/caffe.pb.cc python/caffe/proto/caffe_pb2.py)

PY="${CAFFE_PYTHON:-$ROOT/.venv/bin/python}"
PREFIX="${CAFFE_PREFIX:-$ROOT/third_party/caffe}"
JOBS="${CAFFE_JOBS:-2}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/hypersphere-caffe"
FORCE=0; USE_APT=1; USE_CACHE=1; USE_PTH=1
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --no-apt) USE_APT=0 ;;
    --no-cache) USE_CACHE=0 ;;
    --no-pth) USE_PTH=0 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "caffe_build/build.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[caffe_build] $*"; }
die() { echo "[caffe_build] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no Python at $PY (run tools/setup.sh first, or set CAFFE_PYTHON)"

# ---------------------------------------------------------------- system packages
missing_apt() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
ensure_apt() {
  command -v dpkg-query >/dev/null || { log "not a Debian system: install the equivalents of: ${APT_PACKAGES[*]}"; return; }
  local miss; miss="$(missing_apt | tr '\n' ' ')"
  [ -z "${miss// /}" ] && return
  [ "$USE_APT" = 1 ] || die "missing system packages (and --no-apt): $miss"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing system packages: $miss"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $miss
}

# ---------------------------------------------------------------- Python packages pycaffe imports
ensure_py_deps() {
  if "$PY" -c "import six, skimage, scipy, google.protobuf" 2>/dev/null; then return; fi
  log "installing pycaffe's Python dependencies (requirements-caffe.txt; numpy stays < 2)"
  "$PY" -m pip install -q -r "$ROOT/requirements-caffe.txt" "numpy<2"
}

# ---------------------------------------------------------------- patches
# A Python patch changes only files python/caffe/**.py: nothing compiled depends on it, so it is applied to
# the installed python/caffe tree (after a build or a restore from the cache) and stays out of the key of
# the compiled build: adding or editing one never triggers a rebuild. Every other patch is a source patch.
is_python_patch() {  # at least one file, and every file it changes is python/caffe/**.py
  awk '/^\+\+\+ / { n++; f = $2; sub(/^b\//, "", f); if (f !~ /^python\/caffe\/.*\.py$/) bad = 1 }
       END { exit !(n > 0 && !bad) }' "$1"
}
PY_PATCHES=(); SRC_PATCHES=()
for p in "$HERE"/patches/*.patch; do
  if is_python_patch "$p"; then PY_PATCHES+=("$p"); else SRC_PATCHES+=("$p"); fi
done

# ---------------------------------------------------------------- the key of this build
# sdist hash + our source patches, overlay layers and this script + the Python ABI the .so is built for;
# FULL_KEY (the stamp) adds the Python patches.
build_key() {
  local pytag
  pytag="$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  {
    echo "$SDIST_NAME-$SDIST_VERSION $SDIST_SHA256 $pytag"
    (cd "$HERE" && { echo build.sh; printf 'patches/%s\n' "${SRC_PATCHES[@]##*/}"; find layers -type f; } \
       | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-16
}
full_key() {
  { echo "$1"; [ ${#PY_PATCHES[@]} -eq 0 ] || sha256sum "${PY_PATCHES[@]}" | cut -d' ' -f1; } \
    | sha256sum | cut -c1-16
}

site_packages() { "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
PTH_NAME=hypersphere-caffe.pth

install_pth() {
  local sp; sp="$(site_packages)"
  echo "$PREFIX/python" > "$sp/$PTH_NAME"
}
pth_in_place() {  # the venv's .pth points at this prefix (always true with --no-pth, which never writes it)
  [ "$USE_PTH" = 0 ] && return 0
  [ -f "$(site_packages)/$PTH_NAME" ] && [ "$(cat "$(site_packages)/$PTH_NAME")" = "$PREFIX/python" ]
}

smoke_test() {
  # Run from / with PYTHONPATH = the repo only (for caffe_torch): `import caffe` must then find this
  # build through the .pth file, whatever the caller's PYTHONPATH holds (--no-pth: this build first).
  local path="$ROOT"
  [ "$USE_PTH" = 1 ] || path="$PREFIX/python:$ROOT"
  ldd "$PREFIX/python/caffe/_caffe.so" | grep liblmdb >/dev/null || die "_caffe.so is not linked with LMDB"
  (cd / && PYTHONPATH="$path" "$PY" - "$PREFIX/python" <<'EOF'
import os, sys
want = os.path.realpath(sys.argv[1])
import caffe
got = os.path.realpath(os.path.dirname(os.path.dirname(caffe.__file__)))
types = set(caffe.layer_type_list())
need = {"MarginInnerProduct", "Normalize", "LabelSpecificAdd", "InnerProduct", "AdditiveAngularMargin",
        "ImageData", "WindowData"}  # the last two exist only when built with OpenCV
assert need <= types, "layer types missing from this build: %s" % sorted(need - types)
try:  # our own pb2 (proto package caffe_torch) must load in the same process
    import caffe_torch.proto.caffe_pb2  # noqa: F401
except ImportError as e:
    print("[caffe_build] note: caffe_torch.proto.caffe_pb2 not importable here (%s)" % e)
if got != want:
    sys.exit("[caffe_build] ERROR: `import caffe` resolves to %s, not this build %s" % (got, want))
print("[caffe_build] import caffe OK: %s (%s)" % (caffe.__file__, caffe.__version__))
EOF
  )
}

KEY="$(build_key)"
FULL_KEY="$(full_key "$KEY")"
STAMP="$PREFIX/.stamp"

ensure_apt
ensure_py_deps

if [ "$FORCE" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FULL_KEY" ] \
   && [ -f "$PREFIX/python/caffe/_caffe.so" ] && pth_in_place; then
  log "up to date (key $FULL_KEY, $PREFIX/python)"
  exit 0
fi

CACHED="$CACHE_ROOT/$KEY"
mkdir -p "$PREFIX"

install_python_tree() {  # $1: a directory holding caffe/ -> $PREFIX/python with the Python patches (atomic swap)
  rm -rf "$PREFIX/python.new"
  mkdir -p "$PREFIX/python.new"
  cp -rL "$1/caffe" "$PREFIX/python.new/"
  local p
  for p in "${PY_PATCHES[@]}"; do
    log "patch $(basename "$p") (Python)"
    patch -d "$PREFIX/python.new" -p2 --forward --quiet --no-backup-if-mismatch < "$p" \
      || die "patch $p does not apply to python/caffe"
  done
  rm -rf "$PREFIX/python.old"
  [ -d "$PREFIX/python" ] && mv "$PREFIX/python" "$PREFIX/python.old"
  mv "$PREFIX/python.new" "$PREFIX/python"
  rm -rf "$PREFIX/python.old"
}

if [ "$USE_CACHE" = 1 ] && [ "$FORCE" = 0 ] && [ -f "$CACHED/python/caffe/_caffe.so" ]; then
  log "restoring the build from the cache $CACHED"
  install_python_tree "$CACHED/python"
else
  # ------------------------------------------------------------ the sdist
  SDIST_DIR="$CACHE_ROOT/sdist"
  TARBALL="$SDIST_DIR/$SDIST_NAME-$SDIST_VERSION.tar.gz"
  mkdir -p "$SDIST_DIR"
  have_sha() { [ -f "$TARBALL" ] && [ "$(sha256sum "$TARBALL" | cut -d' ' -f1)" = "$SDIST_SHA256" ]; }
  if ! have_sha; then
    log "downloading $SDIST_NAME==$SDIST_VERSION (sdist) from PyPI"
    tmpd="$(mktemp -d)"
    # pip only fetches here: --no-deps, no build; metadata preparation may still run setup.py,
    # which is why the file is also looked for when pip reports an error afterwards.
    "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmpd" \
      "$SDIST_NAME==$SDIST_VERSION" || true
    [ -f "$tmpd/$SDIST_NAME-$SDIST_VERSION.tar.gz" ] || die "pip download of $SDIST_NAME==$SDIST_VERSION failed"
    mv "$tmpd/$SDIST_NAME-$SDIST_VERSION.tar.gz" "$TARBALL"
    rm -rf "$tmpd"
  fi
  have_sha || die "sha256 of $TARBALL is $(sha256sum "$TARBALL" | cut -d' ' -f1), expected $SDIST_SHA256"
  log "sdist verified: $TARBALL"

  # ------------------------------------------------------------ patched source tree
  # Prepared in a fresh directory, then synchronised into $PREFIX/src copying only files whose
  # content changed, so that a rebuild after editing one layer recompiles only that layer.
  FRESH="$PREFIX/src.fresh"
  rm -rf "$FRESH"; mkdir -p "$FRESH"
  tar -xzf "$TARBALL" -C "$FRESH" --strip-components=1
  for f in "${REMOVE_FILES[@]}"; do rm -f "$FRESH/$f"; done
  for p in "${SRC_PATCHES[@]}"; do
    log "patch $(basename "$p")"
    patch -d "$FRESH" -p1 --forward --quiet --no-backup-if-mismatch < "$p" \
      || die "patch $p does not apply"
  done
  (cd "$HERE/layers" && find include src -type f | while read -r f; do
     mkdir -p "$FRESH/$(dirname "$f")"; cp "$f" "$FRESH/$f"; done)
  "$PY" - "$FRESH" "$PREFIX/src" <<'EOF'
import filecmp, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
want = set()
for d, _, files in os.walk(src):
    rel = os.path.relpath(d, src)
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for f in files:
        r = os.path.normpath(os.path.join(rel, f))
        want.add(r)
        a, b = os.path.join(src, r), os.path.join(dst, r)
        if os.path.islink(b) or not os.path.isfile(b) or not filecmp.cmp(a, b, shallow=False):
            if os.path.lexists(b):
                os.remove(b)
            shutil.copy2(a, b)
            os.utime(b)  # newer than any object built from the old content
for d, _, files in os.walk(dst):
    for f in files:
        r = os.path.normpath(os.path.join(os.path.relpath(d, dst), f))
        # keep build products that CMake writes into the source tree (python/caffe/_caffe.so, pb2)
        if r not in want and not r.startswith(os.path.join("python", "caffe")):
            os.remove(os.path.join(dst, r))
EOF
  rm -rf "$FRESH"

  # ------------------------------------------------------------ configure and build
  PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
  PYBASE="$("$PY" -c 'import sys; print(sys.base_prefix)')"
  PYVER="$("$PY" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')"
  BOOSTPY="$("$PY" -c 'import sys; print("boost_python%d%d" % sys.version_info[:2])')"
  MULTIARCH="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
  HDF5_INC=/usr/include/hdf5/serial
  HDF5_LIB=/usr/lib/$MULTIARCH/hdf5/serial
  [ -f "$PYINC/Python.h" ] || die "Python headers not found at $PYINC (install the -dev package of $PY)"
  ls /usr/lib/"$MULTIARCH"/lib"$BOOSTPY".so >/dev/null 2>&1 \
    || die "lib$BOOSTPY.so not found: Boost.Python must match $PY's version ($PYVER)"
  log "configure (CPU_ONLY, LMDB, OpenCV core/imgproc/imgcodecs, $PYVER, $BOOSTPY)"
  cmake -S "$PREFIX/src" -B "$PREFIX/build" -DCMAKE_BUILD_TYPE=Release \
    -DCPU_ONLY=ON -DBUILD_python=ON -DBUILD_docs=OFF -DUSE_LMDB=ON -DUSE_OPENCV=ON -DUSE_LEVELDB=OFF \
    -DANACONDA_HOME="$PYBASE" -DPYTHON_VERSION="$PYVER" -DCAFFE_BOOST_PYTHON_LIB="$BOOSTPY" \
    -DCMAKE_CXX_FLAGS="-I$HDF5_INC -I$PYINC -I$NPINC -DWITH_PYTHON_LAYER" \
    -DCMAKE_SHARED_LINKER_FLAGS="-L$HDF5_LIB" -DCMAKE_EXE_LINKER_FLAGS="-L$HDF5_LIB" \
    > "$PREFIX/cmake.log" 2>&1 || { tail -40 "$PREFIX/cmake.log"; die "cmake failed (log: $PREFIX/cmake.log)"; }
  log "make -j$JOBS pycaffe (a clean build takes several minutes; log: $PREFIX/make.log)"
  t0=$(date +%s)
  make -C "$PREFIX/build" -j"$JOBS" pycaffe > "$PREFIX/make.log" 2>&1 \
    || { grep -E "error|Error" "$PREFIX/make.log" | head -40; die "make failed (log: $PREFIX/make.log)"; }
  log "built in $(( $(date +%s) - t0 )) s"

  # ------------------------------------------------------------ the Python package
  STAGE="$PREFIX/stage"
  rm -rf "$STAGE"; mkdir -p "$STAGE"
  cp -rL "$PREFIX/src/python/caffe" "$STAGE/"
  rm -rf "$STAGE/caffe/test" "$STAGE/caffe/__pycache__"
  find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
  # The C++ side keeps Debian's libprotobuf; the Python message classes are generated for the
  # venv's protobuf runtime (protobuf >= 5 refuses or warns about 3.21-era generated code).
  if "$PY" -c "import grpc_tools.protoc" 2>/dev/null; then
    log "generating caffe_pb2.py with $PY -m grpc_tools.protoc (for the venv's protobuf runtime)"
    # -I src: the file registers in protobuf's descriptor pool as "caffe/proto/caffe.proto", as
    # BVLC's CMake build does, so it cannot clash with another pb2 registered as "caffe.proto".
    pbtmp="$(mktemp -d)"
    "$PY" -m grpc_tools.protoc -I"$PREFIX/src/src" --python_out="$pbtmp" \
      "$PREFIX/src/src/caffe/proto/caffe.proto"
    cp "$pbtmp/caffe/proto/caffe_pb2.py" "$STAGE/caffe/proto/caffe_pb2.py"
    rm -rf "$pbtmp"
  else
    log "grpc_tools not in $PY: keeping caffe_pb2.py from $(protoc --version)"
  fi
  touch "$STAGE/caffe/proto/__init__.py"
  install_python_tree "$STAGE"

  if [ "$USE_CACHE" = 1 ]; then     # the tree as built, without the Python patches (applied on restore)
    mkdir -p "$CACHE_ROOT"
    rm -rf "$CACHED.tmp"; mkdir -p "$CACHED.tmp"
    cp -r "$STAGE" "$CACHED.tmp/python"
    rm -rf "$CACHED"; mv "$CACHED.tmp" "$CACHED"
    log "cached the build in $CACHED"
    # keep the three most recent builds (other keys: other branches or older patch sets)
    find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
      -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- \
      | while read -r old; do rm -rf "$old"; done
  fi
fi

if [ "$USE_PTH" = 1 ]; then install_pth; fi
rm -rf "$PREFIX/stage"
smoke_test
echo "$FULL_KEY" > "$STAMP"
if [ "$USE_PTH" = 1 ]; then
  log "done: pycaffe in $PREFIX/python, $(site_packages)/$PTH_NAME points at it"
else
  log "done: pycaffe in $PREFIX/python (--no-pth: put it on PYTHONPATH to use it)"
fi
