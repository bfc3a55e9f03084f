"""The solver's update as a few torch._foreach_* calls per group of blobs (issue 21): its op count does not grow
with the number of blobs, frozen blobs cost nothing, the history keeps the weights' memory format. (Its
arithmetic is checked by test_solver.py and the conformance suite.)"""

import torch
from test_step_syncs import small_solver

from caffe_torch.fast import FastOptions
from caffe_torch.opcount import OpCounter


def counted_update(solver) -> OpCounter:
    """The aten ops and host syncs of one apply_update after a forward/backward."""
    solver.net.clear_param_diffs()
    solver.forward_backward()
    with OpCounter() as count:
        solver.apply_update()
    return count


def update_ops(solver) -> int:
    count = counted_update(solver)
    assert count.syncs == 0
    return count.ops


def test_update_ops_are_per_group_not_per_blob_and_frozen_blobs_cost_nothing():
    """SGD with weight decay: per group of blobs sharing (lr_mult, decay_mult) at most 6 foreach calls (decay:
    mul, add; rule: mul, add, copy; Net::Update: sub), and none for the frozen group (lr_mult 0, zero history);
    a loop over the blobs made ~5 ops per blob (346 for these 66)."""
    solver = small_solver("prototxt/demo", "lm", 4)
    live_groups = [g for g in solver._groups if g[0] != 0]
    assert len(solver._params) == 66 and len(live_groups) < len(solver._groups)
    assert update_ops(solver) <= 6 * len(live_groups)


def test_update_ops_do_not_grow_with_the_groups():
    """SGD with weight decay, blobs in several (lr_mult, decay_mult) groups: one foreach call per step of the
    update for all of them (decay: mul, add; rule: mul, copy; Net::Update: sub), scalar lists where the groups
    differ, plus one add per distinct local rate (add's alpha is one scalar); the sequence per group made
    16 ops for the paper net's 3 live groups."""
    solver = small_solver("prototxt", "softmax", 100)
    live = [g for g in solver._groups if g[0] != 0]
    rates = {g[0] for g in live}
    assert len(live) == 3 and len(rates) == 2
    assert update_ops(solver) <= 5 + len(rates)


def test_clipping_is_one_norm_reduction_and_one_read():
    """clip_gradients: the global L2 norm of all the diffs from one foreach reduction, read once (Caffe logs it;
    a loop over the 66 blobs read one norm each), and the scaling, when the norm exceeds the limit, one
    foreach call."""
    plain = counted_update(small_solver("prototxt/demo", "lm", 4)).by_name
    for clip, scaled in ((1e6, False), (1e-6, True)):
        solver = small_solver("prototxt/demo", "lm", 4)
        solver.param.clip_gradients = clip
        count = counted_update(solver)
        assert count.syncs == 1
        extra = count.by_name - plain
        assert (extra["_foreach_norm.Scalar"], extra["linalg_vector_norm.default"],
                extra["_foreach_mul_.Scalar"]) == (1, 1, int(scaled)), extra
        assert extra.total() <= 6, extra          # besides: the stack of the per-blob norms, the read's detach


def test_frozen_blob_with_a_restored_history_is_updated_as_caffe():
    """A frozen (lr_mult 0) blob's SGD update is momentum * history: skipped only while the history is zero."""
    solver = small_solver("prototxt/demo", "lm", 4)
    i = solver._lr_mults.index(0.0)
    prm = solver._params[i][0]
    solver._zero_history[i] = False                    # as restore() sets it for a non-zero history
    solver.history[i].fill_(1.0)
    before = prm.detach().clone()
    update_ops(solver)
    m = solver.param.momentum
    torch.testing.assert_close(prm.detach(), before - m, rtol=0, atol=1e-6)
    torch.testing.assert_close(solver.history[i], torch.full_like(prm, m))


def test_history_in_the_weights_memory_format_after_channels_last():
    solver = small_solver("prototxt/demo", "lm", 4, fast=FastOptions(channels_last=True))
    n = len(solver._params)
    convs = 0
    for k, h in enumerate(solver.history):
        prm = solver._params[k % n][0]
        assert h.stride() == prm.stride()
        convs += prm.dim() == 4 and prm.is_contiguous(memory_format=torch.channels_last)
    assert convs > 0
    solver.step(2)
