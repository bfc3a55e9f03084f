"""Choosing the engine (caffe_torch or a real pycaffe) and the device, the same way in every script."""

import importlib
import os


def default_gpu(gpu: int | None) -> int | None:
    """The GPU to use: `gpu` when given (-1 = CPU); else $SGE_GPU (Grid Engine's choice; the first entry if it
    lists several); else 0 when CUDA is available; else None (CPU)."""
    if gpu is not None:
        return None if gpu < 0 else gpu
    sge = os.environ.get("SGE_GPU", "").strip()
    if sge:
        first = sge.replace(",", " ").split()[0]
        try:
            return int(first)
        except ValueError:
            raise ValueError(f"SGE_GPU={sge!r} is not a GPU index") from None
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


def is_caffe_torch(caffe) -> bool:
    return getattr(caffe, "__name__", "") == "caffe_torch"
