"""Choosing the engine (caffe_torch or a real pycaffe) and the device, the same way in every script."""

import importlib
import os

from .errors import TrainingError


class EngineError(TrainingError):
    """The engine or device a script asked for is not there: no pycaffe for --engine caffe, no CUDA for --gpu N."""


def sge_gpus(environ=os.environ) -> list[int]:
    """The GPUs Grid Engine gave this job: $SGE_GPU, a comma or space separated list of indices ([] if unset),
    mapped to CUDA's numbering (see `gpu_for_process`)."""
    sge = environ.get("SGE_GPU", "").strip()
    if not sge:
        return []
    gpus = []
    for entry in sge.replace(",", " ").split():
        try:
            gpus.append(int(entry))
        except ValueError:
            raise ValueError(f"SGE_GPU={sge!r}: {entry!r} is not a GPU index (Grid Engine sets a comma or space "
                             "separated list of integers)") from None
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return gpus
    # both set: SGE_GPU names physical GPUs; CUDA numbers the visible ones 0, 1, ... in CUDA_VISIBLE_DEVICES'
    # order, so each SGE GPU becomes its position in that list
    order = [v.strip() for v in visible.split(",")]
    mapped = []
    for g in gpus:
        if str(g) not in order:
            raise ValueError(f"SGE_GPU={sge!r} names GPU {g}, which CUDA_VISIBLE_DEVICES={visible!r} hides; unset "
                             "CUDA_VISIBLE_DEVICES (Grid Engine's SGE_GPU then picks the GPU) or make it list it")
        mapped.append(order.index(str(g)))
    return mapped


def gpu_for_process(gpu: int | None, engine: str = "torch", local_rank: int = 0, local_world: int = 1,
                    environ=os.environ) -> int | None:
    """The one rule every script uses for its GPU (None = the CPU):
    - `gpu` (--gpu) when given: -1 = the CPU; with several processes (torchrun) a GPU index means "use GPUs",
      each process taking its own as below;
    - else $SGE_GPU (Grid Engine's choice): entry LOCAL_RANK of it (the first for a single process); fewer
      entries than torchrun processes on this node is an error. When CUDA_VISIBLE_DEVICES is set too, SGE_GPU's
      entries are physical indices and are looked up in CUDA_VISIBLE_DEVICES (CUDA renumbers the visible
      GPUs from 0), an entry it hides being an error;
    - else, for caffe_torch, GPU LOCAL_RANK when CUDA is available; else the CPU. For a real pycaffe (engine
      'caffe') CUDA being present says nothing about the build (ours is CPU-only), so without --gpu or
      $SGE_GPU it runs on the CPU."""
    if gpu is not None and gpu < 0:
        return None
    if gpu is not None and local_world <= 1:
        return gpu
    sge = sge_gpus(environ)
    if sge:
        if local_rank >= len(sge):
            raise ValueError(f"SGE_GPU={environ.get('SGE_GPU')!r} lists {len(sge)} GPU(s) but torchrun started "
                             f"{local_world} processes on this node (LOCAL_RANK {local_rank}): request as many "
                             "GPUs as processes (qsub -l gpu=N) or start fewer (--nproc-per-node)")
        return sge[local_rank]
    if gpu is not None:
        return local_rank
    if engine != "torch":
        return None
    try:
        import torch

        return local_rank if torch.cuda.is_available() else None
    except ImportError:
        return None


def default_gpu(gpu: int | None, engine: str = "torch") -> int | None:
    """The GPU of a single-process script (`gpu_for_process` for one process)."""
    return gpu_for_process(gpu, engine)


def load_engine(name: str, gpu: int | None):
    """Import the engine ('torch' = caffe_torch, 'caffe' = a real pycaffe on sys.path) and set its device;
    returns the module, used exactly like pycaffe."""
    if name == "torch":
        caffe = importlib.import_module("caffe_torch")
    elif name == "caffe":
        try:
            caffe = importlib.import_module("caffe")
        except ImportError as exc:
            raise EngineError(
                f"--engine caffe: cannot import pycaffe ({exc}). Build it with `make caffe` "
                "(docs/pycaffe-scripts.md), or put your own SphereFace / AM-Softmax pycaffe build on PYTHONPATH."
            ) from None
    else:
        raise ValueError(f"unknown engine {name!r}: use 'torch' or 'caffe'")
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        if name == "torch":
            import torch

            if not torch.cuda.is_available():
                raise EngineError(f"GPU {gpu} requested but CUDA is not available; use --gpu -1 for the CPU")
        caffe.set_device(gpu)          # also torch's current CUDA device (caffe_torch's set_device, as pycaffe's)
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
