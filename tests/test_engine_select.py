"""speaker.engine.default_gpu: --gpu, then $SGE_GPU, then (caffe_torch only) CUDA's presence."""
import pytest
import torch

from speaker.engine import default_gpu, load_engine


@pytest.fixture(autouse=True)
def _no_sge(monkeypatch):
    monkeypatch.delenv("SGE_GPU", raising=False)


def test_explicit_gpu_wins(monkeypatch):
    monkeypatch.setenv("SGE_GPU", "3")
    assert default_gpu(2) == 2
    assert default_gpu(-1) is None
    assert default_gpu(-1, "caffe") is None


def test_sge_gpu_first_entry(monkeypatch):
    monkeypatch.setenv("SGE_GPU", "5,6")
    assert default_gpu(None) == 5
    assert default_gpu(None, "caffe") == 5
    monkeypatch.setenv("SGE_GPU", "6 7")
    assert default_gpu(None) == 6


def test_sge_gpu_garbage_is_an_error(monkeypatch):
    monkeypatch.setenv("SGE_GPU", "gpu0")
    with pytest.raises(ValueError, match="SGE_GPU='gpu0'"):
        default_gpu(None)


def test_cuda_presence_decides_only_for_caffe_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_gpu(None) == 0
    assert default_gpu(None, "caffe") is None       # a real pycaffe build may be CPU-only
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_gpu(None) is None


def test_unknown_engine_and_missing_cuda_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("tensorflow", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--gpu -1"):
        load_engine("torch", 0)
