"""speaker.engine.gpu_for_process: the one SGE_GPU rule of every script (single process and torchrun), its
errors, and the documented rule when CUDA_VISIBLE_DEVICES is set as well."""

import pytest

from speaker.engine import gpu_for_process, sge_gpus


def test_sge_gpu_list_and_clear_errors():
    assert sge_gpus({}) == []
    assert sge_gpus({"SGE_GPU": "3, 5"}) == [3, 5] and sge_gpus({"SGE_GPU": "3 5"}) == [3, 5]
    with pytest.raises(ValueError, match="'x' is not a GPU index"):
        sge_gpus({"SGE_GPU": "1,x"})


def test_one_rule_for_single_and_torchrun_processes():
    env = {"SGE_GPU": "4,6"}
    assert gpu_for_process(None, "torch", environ=env) == 4
    assert gpu_for_process(None, "caffe", environ=env) == 4
    assert gpu_for_process(2, "torch", environ=env) == 2                 # --gpu wins for one process
    assert gpu_for_process(-1, "torch", 1, 2, environ=env) is None
    assert gpu_for_process(None, "torch", 1, 2, environ=env) == 6        # LOCAL_RANK-th entry
    assert gpu_for_process(0, "torch", 1, 2, environ=env) == 6
    with pytest.raises(ValueError, match="lists 2 GPU.*3 processes"):
        gpu_for_process(None, "torch", 2, 3, environ=env)
    with pytest.raises(ValueError, match="not a GPU index"):
        gpu_for_process(None, "torch", 0, 2, environ={"SGE_GPU": "a"})
    assert gpu_for_process(None, "caffe", environ={}) is None


def test_cuda_visible_devices_maps_sge_gpus():
    env = {"SGE_GPU": "6", "CUDA_VISIBLE_DEVICES": "2,6"}
    assert gpu_for_process(None, "torch", environ=env) == 1             # physical 6 is CUDA's device 1
    with pytest.raises(ValueError, match="hides"):
        gpu_for_process(None, "torch", environ={"SGE_GPU": "3", "CUDA_VISIBLE_DEVICES": "2,6"})
