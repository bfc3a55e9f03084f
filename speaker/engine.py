"""Choosing the engine (caffe_torch or a real pycaffe) and the device, the same way in every script."""

import importlib
import os


def default_gpu(gpu: int | None, engine: str = "torch") -> int | None:
    """The GPU to use: `gpu` when given (-1 = CPU); else $SGE_GPU (Grid Engine's choice; the first entry if it
    lists several); else, for caffe_torch, 0 when CUDA is available; else None (CPU). For a real pycaffe
    (engine 'caffe') CUDA being present says nothing about the build (ours is CPU-only), so without --gpu or
    $SGE_GPU it runs on the CPU."""
    if gpu is not None:
        return None if gpu < 0 else gpu
    sge = os.environ.get("SGE_GPU", "").strip()
    if sge:
        first = sge.replace(",", " ").split()[0]
        try:
            return int(first)
        except ValueError:
            raise ValueError(f"SGE_GPU={sge!r} is not a GPU index") from None
    if engine != "torch":
        return None
    try:
        import torch

        return 0 if torch.cuda.is_available() else None
    except ImportError:
        return None


def load_engine(name: str, gpu: int | None):
    """Import the engine ('torch' = caffe_torch, 'caffe' = a real pycaffe on sys.path) and set its device;
    returns the module, used exactly like pycaffe."""
    if name == "torch":
        caffe = importlib.import_module("caffe_torch")
    elif name == "caffe":
        try:
            caffe = importlib.import_module("caffe")
        except ImportError as exc:
            raise RuntimeError(
                f"--engine caffe: cannot import pycaffe ({exc}). Build it with `make caffe` (see README), or put "
                "your own SphereFace / AM-Softmax pycaffe build on PYTHONPATH.") from None
    else:
        raise ValueError(f"unknown engine {name!r}: use 'torch' or 'caffe'")
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        if name == "torch":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"GPU {gpu} requested but CUDA is not available; use --gpu -1 for the CPU")
            torch.cuda.set_device(gpu)
        caffe.set_device(gpu)
        caffe.set_mode_gpu()
    return caffe


def try_import_pycaffe(required_layers=()):
    """(the real pycaffe module, None), or (None, why not): not importable, a module named caffe that is not
    pycaffe, or a pycaffe without `required_layers` (e.g. a stock BVLC build without our fork layers).
    For tests and benchmarks that compare against real Caffe when it is there."""
    try:
        caffe = importlib.import_module("caffe")
    except Exception as exc:  # ImportError, or a broken build raising anything else
        return None, f"{type(exc).__name__}: {exc}"
    if not hasattr(caffe, "layer_type_list") or not hasattr(caffe, "get_solver"):
        return None, f"{caffe.__file__} is not pycaffe"
    missing = set(required_layers) - set(caffe.layer_type_list())
    if missing:
        return None, f"{caffe.__file__} is not the project build (lacks {sorted(missing)})"
    return caffe, None


def is_caffe_torch(caffe) -> bool:
    return getattr(caffe, "__name__", "") == "caffe_torch"


def engine_for(name: str, gpu: int | None):
    """load_engine on the device default_gpu picks for this engine (the scripts' --engine/--gpu rule)."""
    return load_engine(name, default_gpu(gpu, name))
