"""Device mode and random seed: the process-wide settings that pycaffe's API itself has.

pycaffe exposes `set_mode_cpu()`, `set_mode_gpu()`, `set_device(i)` and `set_random_seed(s)` as module
functions, so some process-wide state is part of the API we reproduce. It lives here, in one object, and
nowhere else; a `Net` reads it once, when it is built (as Caffe does), so a net never changes device under
you.
"""

import torch


class _Mode:
    def __init__(self):
        self.gpu = False
        self.device_id = 0
        # Caffe draws all filler values from one process-wide generator; set_random_seed reseeds it.
        self.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

    def device(self) -> torch.device:
        if not self.gpu:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise RuntimeError("caffe_torch: set_mode_gpu() was called but no CUDA device is available")
        return torch.device("cuda", self.device_id)


MODE = _Mode()


def set_mode_cpu() -> None:
    MODE.gpu = False


def set_mode_gpu() -> None:
    MODE.gpu = True


def set_device(device_id: int) -> None:
    """As pycaffe's (Caffe::SetDevice, a cudaSetDevice): nets built from now on use this GPU in GPU mode, and
    it becomes torch's current CUDA device, so that code that says just "cuda" uses it too."""
    MODE.device_id = int(device_id)
    if torch.cuda.is_available():
        torch.cuda.set_device(MODE.device_id)


def set_random_seed(seed: int) -> None:
    """Reseed the generator that fillers and dropout masks draw from (as caffe.set_random_seed)."""
    MODE.generator.manual_seed(int(seed))
    torch.manual_seed(int(seed))
