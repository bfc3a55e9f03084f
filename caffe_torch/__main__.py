"""Run an unmodified pycaffe script on caffe_torch:

    python -m caffe_torch train.py --my-args ...
    python -m caffe_torch -m pytest tests/            # a module, as `python -m`

For that run only, `import caffe` and every `caffe.<sub>` import (`caffe.proto.caffe_pb2`, `caffe.io`,
`caffe.draw`, `from caffe import layers as L, params as P`) give caffe_torch and its modules: an import
finder placed first on sys.meta_path maps the name `caffe[.x.y]` to `caffe_torch[.x.y]`, so the real pycaffe,
if installed, is never loaded. sys.argv and sys.path[0] are the script's, as when Python runs it itself.
Child processes started by multiprocessing with "spawn" or "forkserver" (fresh interpreters that re-import
the script) get the same binding: sys.path[1] is caffe_torch/alias, whose `caffe` package installs the finder
there (a `caffe` package in the script's own folder, sys.path[0], would come first in those children).
"""

import argparse
import importlib
import importlib.abc
import importlib.util
import runpy
import sys
from pathlib import Path

ALIAS = "caffe"
TARGET = "caffe_torch"
CHILD_PATH = str(Path(__file__).resolve().parent / "alias")   # holds the `caffe` of spawned children


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target_name: str):
        self.target_name = target_name

    def create_module(self, spec):
        return importlib.import_module(self.target_name)

    def exec_module(self, module) -> None:
        pass          # the target module is already executed


class CaffeAliasFinder(importlib.abc.MetaPathFinder):
    """Finds `caffe` and `caffe.*` as the same-named modules of caffe_torch."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        target_name = TARGET + fullname[len(ALIAS):]
        if importlib.util.find_spec(target_name) is None:
            return None        # no such module in caffe_torch: a plain ModuleNotFoundError for `fullname`
        return importlib.util.spec_from_loader(fullname, _AliasLoader(target_name))


def install_alias() -> CaffeAliasFinder:
    """Bind `caffe` to caffe_torch in this process (dropping an already imported real pycaffe)."""
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        del sys.modules[name]
    finder = CaffeAliasFinder()
    sys.meta_path.insert(0, finder)
    return finder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m caffe_torch",
        description="Run a pycaffe script with `import caffe` bound to caffe_torch.")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module (as python -m MODULE)")
    parser.add_argument("script", nargs="?", help="the pycaffe script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    argv = sys.argv[1:] if argv is None else list(argv)
    # everything after the script (or after -m MODULE) belongs to it, options included
    if argv[:1] == ["-m"] and len(argv) >= 2:
        ns = argparse.Namespace(module=argv[1], script=None, args=argv[2:])
    else:
        ns = parser.parse_args(argv)
    if ns.module is None and ns.script is None:
        parser.error("give a script (or -m MODULE) to run")
    install_alias()
    sys.path.insert(1, CHILD_PATH)
    if ns.module is not None:
        problem = _not_runnable(ns.module)
        if problem:
            parser.error(problem)
        # sys.path[0] is already the working directory, as `python -m MODULE` has it
        sys.argv = [ns.module] + list(ns.args)
        runpy.run_module(ns.module, run_name="__main__", alter_sys=True)
        return 0
    script = Path(ns.script)
    if not script.is_file():
        parser.error(f"no such script: {script}")
    # as `python SCRIPT` has them: argv[0] the script, sys.path[0] its folder (instead of the working
    # directory that `python -m caffe_torch` put there; caffe_torch is already imported)
    sys.argv = [str(script)] + list(ns.args)
    sys.path[0] = str(script.resolve().parent)
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _not_runnable(module: str) -> str | None:
    """Why `python -m MODULE` would fail to start MODULE (None if it would not), said before running it: the
    error of a module found but failing inside stays its own."""
    try:
        spec = importlib.util.find_spec(module)
        package = spec is not None and spec.submodule_search_locations is not None
        if package and importlib.util.find_spec(f"{module}.__main__") is None:
            return f"-m {module}: a package without __main__.py, so it cannot be run"
    except (ImportError, ValueError) as exc:      # a parent package missing, an empty or relative name
        return f"-m {module}: {exc}"
    if spec is None:
        return f"-m {module}: no module named {module!r} (on sys.path: {', '.join(sys.path[:3])}, ...)"
    return None


if __name__ == "__main__":
    sys.exit(main())
