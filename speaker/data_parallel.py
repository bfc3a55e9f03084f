"""Data parallel training under torchrun (WORLD_SIZE > 1): process group, per-process GPU, one all-reduce of
the gradients (plus the loss and the stop flag) per iteration. See speaker/train.py for the scheme."""

import os
from datetime import timedelta

from .engine import gpu_for_process
from .errors import TrainingError


class DataParallel:
    """torch.distributed state of a torchrun launch (WORLD_SIZE > 1); `enabled` is False otherwise."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.is_main = self.rank == 0
        # > 0 when a stop signal reached some process by the last iteration (a device scalar, the same on every
        # process; read by stop_requested, which the loop calls at display iterations only)
        self.stop_flag = None
        self.local_stop = None     # callable: has this process received a stop signal?
        self.gpu_index = None

    def gpu(self, gpu_arg: int | None, engine: str = "torch") -> int | None:
        """The GPU of this process (speaker.engine.gpu_for_process): --gpu -1 forces the CPU; else the
        LOCAL_RANK-th entry of $SGE_GPU, else GPU LOCAL_RANK when CUDA is present; else the CPU."""
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) if self.enabled else 1
        return gpu_for_process(gpu_arg, engine, self.local_rank if self.enabled else 0, local_world)

    def init(self, gpu: int | None) -> None:
        import torch.distributed as dist

        self.gpu_index = gpu
        if gpu is None:
            dist.init_process_group("gloo", timeout=timedelta(minutes=60))
        else:
            import torch

            torch.cuda.set_device(gpu)          # before NCCL starts: each process talks from its own GPU
            dist.init_process_group("nccl", timeout=timedelta(minutes=60), device_id=torch.device("cuda", gpu))
        if dist.get_world_size() != self.world:
            raise TrainingError(f"WORLD_SIZE {self.world} but the process group has {dist.get_world_size()}")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.gpu_index is None:
                dist.barrier()
            else:
                dist.barrier(device_ids=[self.gpu_index])

    def rows(self, batch: int) -> tuple[int, int] | None:
        """This process's rows [r B/K, (r+1) B/K) of every global batch of B; None without data parallelism."""
        if not self.enabled:
            return None
        n = batch // self.world
        return self.rank * n, (self.rank + 1) * n

    def attach(self, solver, batch: int) -> None:
        """Make `solver` one process of the launch: its inputs take B/K rows, its Dropout layers draw the masks
        of the global batch and keep this process's rows, it starts from rank 0's weights, and its gradients
        are averaged by gradient_hook. (Only rank 0 writes snapshots: the training loop's rule.)"""
        from caffe_torch.layers.common import Dropout

        for name in solver.net.inputs:
            blob = solver.net.blobs[name]
            blob.reshape(batch // self.world, *blob.shape[1:])
        solver.net.reshape()
        for layer in solver.net.modules:
            if isinstance(layer, Dropout):
                layer.rows = (self.rows(batch)[0], batch)
        self.broadcast_params(solver.net)
        solver.gradient_hook = self.gradient_hook

    def broadcast_params(self, net) -> None:
        """Every process starts from rank 0's weights (they are equal anyway: same seed and files)."""
        import torch.distributed as dist

        for p, *_ in net.learnable_params():
            dist.broadcast(p.data, 0)

    def gradient_hook(self, solver, loss):
        """Solver.gradient_hook: one all-reduce of [all param diffs..., loss, stop flag]; diffs and loss (a
        float64 device scalar, returned) become their mean over the processes. Nothing is read from the
        device: the stop flag stays there until stop_requested."""
        import torch
        import torch.distributed as dist

        grads = [p.grad for p, *_ in solver.net.learnable_params() if p.grad is not None]
        dtype = grads[0].dtype if grads else torch.float32
        stopping = torch.full((1,), 1.0 if self.local_stop and self.local_stop() else 0.0, dtype=dtype,
                              device=loss.device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(dtype), stopping])
        dist.all_reduce(flat)
        flat /= self.world
        means = flat[:-2].split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [v.view(g.shape) for v, g in zip(means, grads)])
        self.stop_flag = flat[-1]
        return flat[-2].to(torch.float64)

    def stop_check_every(self, display: int) -> int:
        """How often (iterations) the loop asks stop_requested: every iteration on CPUs (a read costs nothing
        there), every `display` on GPUs (one read per display, where the loss is read anyway)."""
        return 1 if self.gpu_index is None else display

    def stop_requested(self) -> bool:
        """Did a stop signal reach any process by the last iteration? (One device read; every process gets
        the same answer at the same iteration.)"""
        from caffe_torch.opcount import host_values

        return self.stop_flag is not None and host_values(self.stop_flag)[0] > 0

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
