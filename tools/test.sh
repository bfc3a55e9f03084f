#!/usr/bin/env bash
# The test suite: set-up (idempotent), the generated-code check, ruff, then pytest.
# Extra arguments go to pytest (e.g. bash tools/test.sh -k solver).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python -m caffe_torch.proto.generate --check
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "tools/test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
