#!/usr/bin/env python
"""Export a trained speaker net as one ONNX graph: 16 kHz waveform (N, L) -> L2-normalised embedding (N, D).

The graph computes what `test_verification.py --crops full` embeds (the paper's front end, the net's layers up
to the pooling layer on the whole utterance, the time average, the layers up to the embedding blob), then
divides by the norm, as cosine scoring does; batch and length are dynamic. Needs the export extras
(pip install -r requirements-export.txt). Example use: examples/embed_onnx.py (onnxruntime, numpy, soundfile).

File defaults: --net <run-dir>/test.prototxt, deploy.prototxt or net.prototxt (or in run-dir's parent);
--weights <run-dir>/final.caffemodel.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", help="training run directory (net and final.caffemodel)")
    p.add_argument("--net", help="TEST-phase net prototxt (default: test.prototxt, deploy.prototxt or "
                   "net.prototxt in --run-dir or its parent)")
    p.add_argument("--weights", help=".caffemodel (default: <run-dir>/final.caffemodel)")
    p.add_argument("-o", "--out", required=True, metavar="EMBEDDER.onnx", help="the ONNX file to write")
    p.add_argument("--int16", action="store_true", help="the input is int16 samples (default: float32, any "
                   "scale: the front end's normalisation makes the embedding scale-free)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 to 21; default 17)")
    p.add_argument("--data-blob", default="data", help="the net's input blob (default %(default)s)")
    p.add_argument("--pool-blob", default="res4_3p", help="the pooled blob (default %(default)s)")
    p.add_argument("--embed-blob", default="fc5", help="the embedding blob (default %(default)s)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from speaker.evaluate import NET_NAMES, find_run_file

    try:
        if not (args.run_dir or (args.net and args.weights)):
            raise ValueError("give --run-dir, or --net and --weights")
        net = args.net or find_run_file(args.run_dir, NET_NAMES, "TEST net prototxt", "--net")
        weights = args.weights or os.path.join(args.run_dir, "final.caffemodel")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--weights {weights}: no such file")
        try:
            import onnx

            from caffe_torch.export import ExportError
            from speaker.embedder_export import build_embedder
        except ImportError as exc:
            raise ValueError(f"the export extras are not installed (pip install -r requirements-export.txt): "
                             f"{exc}") from None
        try:
            model = build_embedder(net, weights, args.opset, args.int16, args.data_blob, args.pool_blob,
                                   args.embed_blob)
        except ExportError as exc:
            raise ValueError(str(exc)) from None
        onnx.save(model, args.out)
    except (ValueError, OSError) as exc:
        print(f"export_embedder.py: {exc}", file=sys.stderr)
        return 2
    dim = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    print(f"wrote {args.out}: waveform ({'int16' if args.int16 else 'float32'}, batch x samples at 16 kHz) -> "
          f"embedding (batch x {dim}, L2-normalised); net {net}, weights {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
