"""The benchmarks' CUDA paths, run on the CPU with a stand-in for torch.cuda that behaves as torch's does:
`--device cuda` selects an indexed device (torch.cuda.set_device(torch.device("cuda")) raises), the timer
waits for the benchmarked device, fp32 rows run with TF32 off, and every row states its precision."""

import importlib.util
from pathlib import Path

import pytest
import torch

from caffe_torch import fast

ROOT = Path(__file__).resolve().parent.parent


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeCuda:
    """torch.cuda as far as the benches use it, on a machine with GPUs 0..3 and GPU 2 current."""

    def __init__(self):
        self.current, self.synced = 2, []

    def is_available(self):
        return True

    def current_device(self):
        return self.current

    def set_device(self, device):
        # as torch: a device without an index cannot be made current
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError("Expected a cuda device with a specified index or an integer, but got:cuda")
        self.current = device.index if isinstance(device, torch.device) else int(device)

    def synchronize(self, device=None):
        self.synced.append(device)


def test_bench_all_device_cuda_without_index():
    bench_all = _bench("bench_all")
    cuda = FakeCuda()
    assert bench_all.select_device("cuda", cuda) == torch.device("cuda", 2)
    assert bench_all.select_device("cuda:1", cuda) == torch.device("cuda", 1) and cuda.current == 1
    assert bench_all.select_device("cpu", cuda) == torch.device("cpu")
    bench_all._sync(torch.device("cuda", 3), cuda)()
    assert cuda.synced == [torch.device("cuda", 3)]


def test_bench_engine_syncs_the_benchmarked_device():
    bench_engine = _bench("bench_engine")
    cuda = FakeCuda()
    bench_engine.device_sync(torch.device("cuda", 1), cuda)()
    assert cuda.synced == [torch.device("cuda", 1)]          # not the current device (2)
    bench_engine.device_sync(torch.device("cpu"), cuda)()
    assert cuda.synced == [torch.device("cuda", 1)]


def test_fp32_rows_run_without_tf32_and_rows_state_precision(monkeypatch):
    bench_all = _bench("bench_all")
    seen = []

    class Solver:
        def step(self, n):
            seen.append(fast.tf32_enabled())

    before = fast.tf32_enabled()
    try:
        fast.set_tf32(True)                         # e.g. left on by an earlier --tf32 row
        bench_all.timed_step(Solver(), None)()
        assert seen == [False] and fast.tf32_enabled()
    finally:
        fast.set_tf32(before)
    monkeypatch.setattr(bench_all, "cpu_bf16_native", lambda cpuinfo=None: False)
    opts = bench_all.fast_options(torch.device("cpu"), False)
    assert opts.amp is None and not opts.tf32
    assert bench_all.precision(torch.device("cpu"), opts).startswith("fp32; CPU ")
    assert bench_all.fast_options(torch.device("cuda", 0), False).amp == "bf16"
    assert bench_all.precision(torch.device("cuda", 0), bench_all.fast_options(torch.device("cuda", 0), False)) \
        == "bf16"
    assert bench_all.precision(torch.device("cuda", 0), None) == "fp32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_all_runs_with_device_cuda(tmp_path):
    assert _bench("bench_all").main(["--device", "cuda", "--sections", "e", "--json", str(tmp_path / "a.json")]) == 0
