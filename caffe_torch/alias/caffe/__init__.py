"""`import caffe` in the child processes of `python -m caffe_torch`: multiprocessing's "spawn" and "forkserver"
start a fresh interpreter, which re-imports the script (and so `import caffe`) with the parent's sys.path but
without its import hooks. caffe_torch/__main__.py puts the folder above this one on that sys.path; importing
this module binds `caffe` and every `caffe.<sub>` to caffe_torch in the child, as in the parent."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("caffe_torch") is None:   # not installed: the parent imported it from its checkout
    sys.path.append(str(Path(__file__).resolve().parents[3]))

import caffe_torch  # noqa: E402
from caffe_torch.__main__ import CaffeAliasFinder  # noqa: E402

if not any(isinstance(finder, CaffeAliasFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, CaffeAliasFinder())
sys.modules[__name__] = caffe_torch      # what the import statement returns: caffe_torch itself
