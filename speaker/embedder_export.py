"""One ONNX graph from a 16 kHz waveform to the L2-normalised speaker embedding: the full-utterance protocol of
`test_verification.py --crops full` (speaker/evaluate.py: full_utterance_forward) with the paper's front end
(voxdata/frontend.py) inside.

    waveform (N, L) float32 (any scale; int16 samples as they are) or int16 (--int16)
      -> repeated cyclically up to one crop when shorter (np.resize, as full_utterance_forward)
      -> cut to the 160 (F - 1) + 401 samples that its F = ceil((L - 400) / 160) frames cover (as
         full_utterance_forward: the DC mean is over those)
      -> DC removal (the mean in float64), pre-emphasis 0.97
      -> zero-padded to F*160 + 400 samples
      -> STFT: frames of 512 every 160 samples, window = 400-point symmetric Hamming + 112 zeros (= the
         frontend's 400-sample frame zero-padded to the 512-point FFT), one-sided: |.| -> (N, F, 257)
      -> per bin over time: (S - mean) / std (population std; a std of 0 divides by 1)
      -> data (N, 1, F, 257) -> the net's layers before the pooling layer (res4_3p's producer)
      -> mean over all time steps (what the pooling layer computes for one crop) -> res4_3p (N, C, 1, W)
      -> the layers from res4_3p to the embedding blob (fc5) -> x / ||x||  -> embedding (N, D)
Batch and length are dynamic; the utterances of one batch have one length. test_verification cuts an utterance
longer than --max-frames (6000 frames, 60 s) into chunks; this graph runs it whole (the same embedding up to
that length).
"""

from __future__ import annotations

import numpy as np

from voxdata.frontend import FRAME_LENGTH, FRAME_SHIFT, NFFT, PREEMPHASIS, crop_length

_FLOAT, _DOUBLE, _INT64 = 1, 11, 7        # ONNX TensorProto element types


def frontend_nodes(g, wave: str, min_length: int, out: str) -> str:
    """The paper's spectrogram of `wave` (N, L) float32 as ONNX nodes: (N, 1, F, 257) named `out`."""
    def ints(v, name):
        return g.ints(v, f"frontend/{name}")

    def op(op_type, inputs, name, **attrs):
        return g.op(op_type, inputs, f"frontend/{name}", **attrs)

    # repeat cyclically up to min_length samples: tile ceil(min_length / L) times, keep max(L, min_length)
    length = op("Slice", [op("Shape", [wave], "shape"), ints([1], "one"), ints([2], "two")], "length")
    reps = op("Div", [op("Add", [length, ints([min_length - 1], "min_minus_1")], "ceil_num"),
                      length], "repeats")
    tiled = op("Tile", [wave, op("Concat", [ints([1], "one_rep"), reps], "tile_reps", axis=0)], "tiled")
    keep = op("Max", [length, ints([min_length], "min_length")], "kept_length")
    # F = ceil((L - 400) / 160) frames; like full_utterance_forward, keep the samples those frames cover,
    # 160 (F - 1) + 401: the DC mean is taken over them
    frames = op("Div", [op("Add", [keep, ints([FRAME_SHIFT - 1 - FRAME_LENGTH], "ceil_offset")], "f_num"),
                        ints([FRAME_SHIFT], "shift")], "frames")
    covered = op("Add", [op("Mul", [frames, ints([FRAME_SHIFT], "shift_b")], "f_shift"),
                         ints([FRAME_LENGTH + 1 - FRAME_SHIFT], "last_frame")], "covered")
    x = op("Slice", [tiled, ints([0], "zero"), covered, ints([1], "axis1")], "signal")
    # DC removal: the mean in float64 (exact for int16 samples), then y[0] = x[0] - m,
    # y[n] = x[n] - 0.97 x[n-1] - 0.03 m
    mean = g.reduce("ReduceMean", op("Cast", [x], "signal64", to=_DOUBLE), [1], "frontend/mean64")
    mean = op("Cast", [mean], "mean", to=_FLOAT)
    first = op("Sub", [op("Slice", [x, ints([0], "s0"), ints([1], "e1"), ints([1], "ax1")], "x0"), mean], "y0")
    head = op("Slice", [x, ints([0], "s0b"), ints([-1], "e_last"), ints([1], "ax1b")], "x_prev")
    tail = op("Slice", [x, ints([1], "s1"), ints([2**62], "e_end"), ints([1], "ax1c")], "x_next")
    rest = op("Sub", [tail, op("Mul", [head, g.const(PREEMPHASIS, "frontend/preemphasis")], "scaled_prev")],
              "differences")
    rest = op("Sub", [rest, op("Mul", [mean, g.const(1.0 - PREEMPHASIS, "frontend/dc_share")], "dc")], "y_rest")
    emph = op("Concat", [first, rest], "emphasised", axis=1)
    # zero-padded from 160 (F - 1) + 401 to F * 160 + 400 samples (frames of 512 then fit exactly F times)
    pads = ints([0, 0, 0, FRAME_SHIFT - 1], "pads")
    padded = op("Pad", [emph, pads], "padded")
    window = np.zeros(NFFT, dtype=np.float32)
    window[:FRAME_LENGTH] = np.hamming(FRAME_LENGTH)
    stft = op("STFT", [op("Unsqueeze", [padded, ints([2], "channel_axis")], "signal3"),
                       g.const(FRAME_SHIFT, "frontend/frame_step", np.int64),
                       g.const(window, "frontend/window"), g.const(NFFT, "frontend/frame_length", np.int64)],
              "stft", onesided=1)                                                   # (N, F, 257, 2)
    mag = g.reduce("ReduceL2", stft, [3], "frontend/magnitude", keepdims=False)      # (N, F, 257)
    mu = g.reduce("ReduceMean", mag, [1], "frontend/bin_mean")
    centred = op("Sub", [mag, mu], "centred")
    sd = op("Sqrt", [g.reduce("ReduceMean", op("Mul", [centred, centred], "sq"), [1], "frontend/bin_var")],
            "bin_std")
    zero = op("Equal", [sd, g.const(0.0, "frontend/zero")], "silent_bin")
    sd = op("Where", [zero, g.const(1.0, "frontend/one_f"), sd], "bin_std_safe")
    normed = op("Div", [centred, sd], "normalised")
    return g.op("Unsqueeze", [normed, ints([1], "data_channel")], out, [out])


def build_embedder(net_path: str, weights: str, opset: int = 17, int16: bool = False, data_blob: str = "data",
                   pool_blob: str = "res4_3p", embed_blob: str = "fc5"):
    """The embedder's ONNX model from a TEST net prototxt and its weights."""
    from onnx import TensorProto, checker

    from caffe_torch.export import ExportError, build_net, make_plan
    from caffe_torch.export.convert import emit_steps
    from caffe_torch.export.graph import Graph
    from speaker.evaluate import head_layer, pool_layer

    if opset < 17:
        raise ExportError(f"--opset {opset}: the embedder's STFT needs opset 17 or later")
    net, where = build_net(net_path, weights, "TEST")
    if data_blob not in net.inputs:
        raise ExportError(f"{net_path}: no input blob {data_blob!r} (inputs: {net.inputs})")
    frames = net.blobs[data_blob].shape[2]
    names = list(net._layer_names)
    pool = pool_layer(net, pool_blob)
    head = head_layer(net, pool_blob)
    trunk_blob = net.bottom_names[pool][0]
    # the trunk, with the batch and the time axis dynamic
    trunk = make_plan(net, where, [trunk_blob], {data_blob: frozenset({0, 2})}, stop_before=pool)
    # the head: the layers after the pooling layer that the embedding needs, the batch dynamic
    full = make_plan(net, where, [embed_blob], {data_blob: frozenset({0})})
    head_steps = [s for s in full.steps if s.index >= names.index(head)]
    made = {pool_blob} | {t for s in head_steps for t in s.tops}
    for s in head_steps:
        outside = [b for b in s.bottoms if b not in made]
        if outside:
            raise ExportError(f"{s.where}: layer '{s.layer.param.name}' reads {outside}, made before the pooling "
                              f"layer '{pool}': the full-utterance protocol runs the head on {pool_blob} alone")
    g = Graph(opset)
    wave_type = TensorProto.INT16 if int16 else TensorProto.FLOAT
    g.add_input("waveform", wave_type, ["batch", "samples"])
    wave = g.op("Cast", ["waveform"], "waveform_float", to=_FLOAT) if int16 else "waveform"
    current = {data_blob: frontend_nodes(g, wave, crop_length(frames), data_blob)}
    emit_steps(g, trunk.steps, current, {data_blob})
    # the average over all time steps: the pooling layer's result for a crop, for the whole utterance
    current[pool_blob] = g.reduce("ReduceMean", current[trunk_blob], [2], pool_blob, outputs=[pool_blob])
    emit_steps(g, head_steps, current, {data_blob, pool_blob})
    emb = current[embed_blob]
    flat = g.reshape(emb, [0, -1], "embedding/flat")
    g.op("Div", [flat, g.reduce("ReduceL2", flat, [1], "embedding/norm")], "embedding", ["embedding"])
    dim = int(np.prod(net.blobs[embed_blob].shape[1:]))
    g.add_output("embedding", TensorProto.FLOAT, ["batch", dim])
    model = g.model("speaker_embedder", doc=f"waveform -> L2-normalised {embed_blob} of {net_path} "
                    f"(full-utterance protocol; weights {weights})")
    checker.check_model(model, full_check=True)
    return model
