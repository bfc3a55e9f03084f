#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install requirements.txt into it. Idempotent: a second
# run only checks. The interpreter is $PYTHON (default python3; 3.11 tested), e.g.
#   PYTHON=python3.11 bash tools/setup.sh
# used only to create .venv (an existing .venv is kept: delete it to switch interpreters). On a bare
# Debian/Ubuntu it installs python3-venv with apt-get when it can (as root). libsndfile needs no system
# package: soundfile's Linux/macOS/Windows wheels bundle it.
# It also puts the repository on .venv's import path (.venv/lib/python3.X/site-packages/hypersphere-speaker.pth),
# so that .venv's python finds caffe_torch, speaker and voxdata from any folder: `python -m caffe_torch
# my_script.py` anywhere once .venv is activated (source .venv/bin/activate). Moved the repository? Re-run this.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
need_apt=()
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
    else
        echo "setup: missing system packages: ${need_apt[*]} (install them with apt-get)" >&2
        exit 1
    fi
fi

link_repo() {     # the .pth line: the repository's absolute path (written only when it changes)
    local site pth
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    pth="$site/hypersphere-speaker.pth"
    [ "$(cat "$pth" 2>/dev/null)" = "$PWD" ] || echo "$PWD" > "$pth"
}

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    link_repo
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PYTHON ($("$PYTHON" --version 2>&1)); set PYTHON= to use another" >&2
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
link_repo
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python --version))"
