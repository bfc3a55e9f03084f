"""The exported speaker embedder on ONNX Runtime (CPU) against caffe_torch, side by side in one run.

Milliseconds per utterance of --seconds-audio (default 8 s, 128,000 samples at 16 kHz) for:
  onnxruntime  the ONNX graph of export_embedder.py (front end, trunk, time average, head, L2 norm);
  caffe_torch  test_verification.py --crops full's embedding of the same utterance (speaker.evaluate.embed_full:
               the NumPy front end, then the net through the pycaffe API) and its L2 normalisation.
Both on the CPU with the same number of threads, timed in interleaved rounds (median reported), their
embeddings compared. The net: the paper's verification ResNet-20 (prototxt/verification/ResNet-20_lm.prototxt,
512-D) with weights from its fillers (seed 1), or --net/--weights.

    python bench/bench_export.py [--seconds-audio 8] [--rounds 7] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.timing import interleaved_times  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default=os.path.join(ROOT, "prototxt", "verification", "ResNet-20_lm.prototxt"))
    p.add_argument("--weights", help=".caffemodel (default: the net's fillers, seed 1)")
    p.add_argument("--seconds-audio", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, help="threads for both engines (default: torch's default)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch

    import caffe_torch
    from speaker.embedder_export import build_embedder
    from speaker.evaluate import embed_full
    from speaker.scoring import l2_normalize

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            caffe_torch.set_random_seed(1)
            weights = os.path.join(tmp, "fillers.caffemodel")
            caffe_torch.Net(args.net, caffe_torch.TEST).save(weights)
        model = build_embedder(args.net, weights)
        path = os.path.join(tmp, "embedder.onnx")
        onnx.save(model, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        net = caffe_torch.Net(args.net, weights, caffe_torch.TEST)

    n = int(round(args.seconds_audio * 16000))
    rng = np.random.default_rng(0)
    t = np.arange(n)
    audio = (3000 * np.sin(2 * np.pi * 180 * t / 16000) + rng.normal(0, 800, n)).astype(np.int16)
    results = {}

    def run_onnx():
        results["onnxruntime"] = session.run(["embedding"], {"waveform": audio[None].astype(np.float32)})[0][0]

    def run_torch():
        with torch.no_grad():
            emb = embed_full(net, ["utt"], lambda _: audio, progress=False)[1]
        results["caffe_torch"] = l2_normalize(emb)[0]

    times = interleaved_times({"onnxruntime": run_onnx, "caffe_torch": run_torch}, args.rounds, warmup=1,
                              alternate=True)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    diff = float(np.abs(results["onnxruntime"] - results["caffe_torch"]).max())
    print(f"speaker embedder, one {args.seconds_audio:g} s utterance ({n} samples), {os.path.basename(args.net)}, "
          f"CPU, {threads} thread(s), median of {args.rounds} interleaved rounds:")
    for k in ("onnxruntime", "caffe_torch"):
        print(f"  {k:12} {ms[k]:9.1f} ms per utterance")
    print(f"  ratio caffe_torch / onnxruntime {ms['caffe_torch'] / ms['onnxruntime']:.2f}; embeddings differ by "
          f"at most {diff:.2g} (L2-normalised, {results['caffe_torch'].size}-D)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds_audio": args.seconds_audio, "threads": threads, "net": args.net,
                       "ms_per_utterance": ms, "max_abs_difference": diff,
                       "onnxruntime_version": ort.__version__, "torch_version": torch.__version__}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
