"""python -m caffe_torch.export NET.prototxt WEIGHTS.caffemodel -o model.onnx [--torchscript model.pt] ..."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m caffe_torch.export",
        description="Export a Caffe net (prototxt + .caffemodel) to ONNX and/or TorchScript, computing what "
        "caffe_torch (and Caffe) compute in the chosen phase. Data layers become graph inputs; the outputs are "
        "named after the Caffe blobs; a layer type without an export rule is refused, naming the layer.")
    p.add_argument("net", nargs="?", help="net prototxt")
    p.add_argument("weights", nargs="?", help=".caffemodel (its layers fill the same-named layers, as Caffe)")
    p.add_argument("-o", "--onnx", metavar="MODEL.onnx", help="write the ONNX model here")
    p.add_argument("--torchscript", metavar="MODEL.pt", help="write a TorchScript module here (torch.jit.load)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of an input blob (repeatable); needed where the prototxt does not fix it (Data, "
                   "ImageData, HDF5Data layers); overrides an Input layer's shape")
    p.add_argument("--output", action="append", metavar="BLOB",
                   help="export only what this blob needs and make it an output (repeatable; default: the "
                   "net's outputs, the blobs no layer consumes)")
    p.add_argument("--dynamic-batch", action="store_true", help="the inputs' first axis is dynamic")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13 to 21; default 17)")
    p.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST",
                   help="which phase's layers and behaviour to export (default TEST: a deployed net)")
    p.add_argument("--deploy-prototxt", metavar="FILE", help="also write what was exported as a Caffe deploy "
                   "prototxt (Input layers, the exported layers; same weights), e.g. for other Caffe readers")
    p.add_argument("--list-types", action="store_true", help="print which layer types export, and exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from . import ExportError, build_net, deploy_net, export_table, make_plan, parse_shape, to_onnx, to_torchscript

        if args.onnx:
            import onnx  # noqa: F401  (the one package ONNX export needs beyond torch)
    except ImportError as exc:
        print(f"caffe_torch.export needs the export extras (pip install -r requirements-export.txt): {exc}",
              file=sys.stderr)
        return 2
    if args.list_types:
        for type_name, status, note in export_table():
            print(f"{type_name:26} {status:12} {note}")
        return 0
    if not args.net or not args.weights:
        print("python -m caffe_torch.export: give NET.prototxt and WEIGHTS.caffemodel", file=sys.stderr)
        return 2
    if not (args.onnx or args.torchscript):
        print("python -m caffe_torch.export: give -o MODEL.onnx and/or --torchscript MODEL.pt", file=sys.stderr)
        return 2
    try:
        shapes = dict(parse_shape(s) for s in args.input)
        net, where = build_net(args.net, args.weights, args.phase, shapes)
        dynamic = {t: frozenset({0}) for t in net.inputs} if args.dynamic_batch else None
        plan = make_plan(net, where, args.output, dynamic)
        if plan.left_out:
            print("left out (no output needs them): " + ", ".join(f"{n} ({t})" for n, t in plan.left_out))
        if args.onnx:
            import onnx

            model = to_onnx(plan, args.opset, net.name or "caffe_net")
            onnx.save(model, args.onnx)
            print(f"wrote {args.onnx}: {len(plan.steps)} layers as {len(model.graph.node)} ONNX nodes (opset "
                  f"{args.opset})")
        if args.deploy_prototxt:
            from google.protobuf import text_format

            with open(args.deploy_prototxt, "w") as f:
                f.write(text_format.MessageToString(deploy_net(plan)))
            print(f"wrote {args.deploy_prototxt} (the exported layers as a deploy prototxt)")
        if args.torchscript:
            to_torchscript(plan).save(args.torchscript)
            print(f"wrote {args.torchscript} (TorchScript, traced at the input shapes"
                  f"{'; batch dynamic' if args.dynamic_batch else ''})")
    except (ExportError, ValueError, OSError) as exc:
        print(f"caffe_torch.export: {exc}", file=sys.stderr)
        return 1
    for t in plan.inputs:
        print(f"input  {t} {_shape(plan.input_shapes[t], plan.input_dynamic[t])}")
    shapes_out = {t: (s, d) for st in plan.steps for t, s, d in zip(st.tops, st.out_shapes, st.out_dynamic)}
    for o in plan.outputs:
        print(f"output {o} {_shape(*shapes_out.get(o, (plan.input_shapes.get(o), frozenset())))}")
    return 0


def _shape(shape, dyn) -> str:
    return "(" + ", ".join("N" if a in dyn else str(d) for a, d in enumerate(shape)) + ")"


if __name__ == "__main__":
    sys.exit(main())
