"""Training-step throughput of the paper's ResNet-20 (softmax head) in caffe_torch vs a hand-written
torch.nn.Module of the same network with identical weights, measured side by side in one run, with the aten ops
and host syncs per step of each (counted with caffe_torch.opcount.OpCounter).

    python bench/bench_engine.py                       # CPU defaults (batch 8), about two minutes on 2 cores
    python bench/bench_engine.py --batch 50 --iters 20 --device cuda --json out.json

The engine net is prototxt/ResNet-20_softmax.prototxt (or the generated text below if that file is absent)
with the Input shapes set to --batch x 1 x --frames x 257; the engine side is one training iteration of the
SGD solver as the training script runs it (Solver.step(1): forward, backward, the fused update, Accuracy
layers included; the paper's momentum, weight decay and display interval); the hand-written side runs the
same convolutions, PReLUs, sums, pooling, fc5/fc6 and the cross entropy, then torch.optim.SGD(foreach=True)
with the same momentum and weight decay. Both start from the same weights, and the bench checks that their
losses agree before timing.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import caffe_torch as caffe  # noqa: E402
from bench.timing import interleaved_times  # noqa: E402
from caffe_torch.fast import cpu_capability, tf32_scope  # noqa: E402
from caffe_torch.opcount import OpCounter  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402
from caffe_torch.prototxt import parse_net_text, read_net, read_solver  # noqa: E402
from caffe_torch.solver import SGDSolver  # noqa: E402

WIDTHS, UNITS = (64, 128, 256, 512), (1, 2, 4, 1)


def generated_prototxt(embedding: int, classes: int) -> str:
    """ResNet-20 as tools/make_prototxt.py writes it (used only if prototxt/ResNet-20_softmax.prototxt is missing)."""
    def conv(name, bottom, n, stride, first):
        filler = 'type: "xavier"' if first else 'type: "gaussian" std: 0.01'
        bias_lr = "lr_mult: 2 decay_mult: 0" if first else "lr_mult: 0 decay_mult: 0"
        return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                f'param {{ lr_mult: 1 decay_mult: 1 }} param {{ {bias_lr} }} '
                f'convolution_param {{ num_output: {n} '
                f'kernel_size: 3 stride: {stride} pad: 1 weight_filler {{ {filler} }} }} }}\n'
                f'layer {{ name: "relu{name[4:]}" type: "PReLU" bottom: "{name}" top: "{name}" }}\n')
    text = ('name: "ResNet-20"\nlayer { name: "data" type: "Input" top: "data" top: "label" input_param { '
            'shape { dim: 50 dim: 1 dim: 300 dim: 257 } shape { dim: 50 dim: 1 dim: 1 dim: 1 } } }\n')
    bottom = "data"
    for s, (width, units) in enumerate(zip(WIDTHS, UNITS), start=1):
        text += conv(f"conv{s}_1", bottom, width, 2, True)
        unit_in = f"conv{s}_1"
        for u in range(1, units + 1):
            a, b = f"conv{s}_{2 * u}", f"conv{s}_{2 * u + 1}"
            text += conv(a, unit_in, width, 1, False) + conv(b, a, width, 1, False)
            res = f"res{s}_{2 * u + 1}"
            text += (f'layer {{ name: "{res}" type: "Eltwise" bottom: "{unit_in}" bottom: "{b}" top: "{res}" '
                     'eltwise_param { operation: SUM } }\n')
            unit_in = res
        bottom = unit_in
    text += ('layer { name: "res4_3p" type: "Pooling" bottom: "res4_3" top: "res4_3p" '
             'pooling_param { pool: AVE '
             'kernel_h: 19 kernel_w: 1 stride: 1 } }\n'
             f'layer {{ name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5" inner_product_param {{ '
             f'num_output: {embedding} weight_filler {{ type: "xavier" }} }} }}\n'
             f'layer {{ name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6" inner_product_param {{ '
             f'num_output: {classes} weight_filler {{ type: "xavier" }} }} }}\n'
             'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" '
             'top: "softmax_loss" }\n')
    return text


class ResNet20(nn.Module):
    """The same network written directly in PyTorch, parameters named after the prototxt layers."""

    def __init__(self, frames: int, freq: int, embedding: int, classes: int):
        super().__init__()
        self.convs, self.prelus = nn.ModuleDict(), nn.ModuleDict()
        cin = 1
        for s, (width, units) in enumerate(zip(WIDTHS, UNITS), start=1):
            for k in range(1, 2 * units + 2):
                first = k == 1
                stride = 2 if first else 1
                self.convs[f"conv{s}_{k}"] = nn.Conv2d(cin if first else width, width, 3, stride, 1)
                self.prelus[f"relu{s}_{k}"] = nn.PReLU(width)
            cin = width
        h, w = frames, freq
        for _ in range(4):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.pool_h = h
        self.fc5 = nn.Linear(WIDTHS[-1] * w, embedding)
        self.fc6 = nn.Linear(embedding, classes)

    def forward(self, x, label):
        for s, units in enumerate(UNITS, start=1):
            x = self.prelus[f"relu{s}_1"](self.convs[f"conv{s}_1"](x))
            for u in range(1, units + 1):
                y = x
                for k in (2 * u, 2 * u + 1):
                    y = self.prelus[f"relu{s}_{k}"](self.convs[f"conv{s}_{k}"](y))
                x = x + y
        x = F.avg_pool2d(x, (self.pool_h, 1), 1)
        x = self.fc6(self.fc5(x.flatten(1)))
        return F.cross_entropy(x, label)

    @torch.no_grad()
    def copy_from_net(self, net) -> None:
        for name, conv in self.convs.items():
            conv.weight.copy_(net.params[name][0].tensor)
            conv.bias.copy_(net.params[name][1].tensor)
        for name, prelu in self.prelus.items():
            prelu.weight.copy_(net.params[name][0].tensor)
        for name in ("fc5", "fc6"):
            getattr(self, name).weight.copy_(net.params[name][0].tensor)
            getattr(self, name).bias.copy_(net.params[name][1].tensor)


def build_engine_solver(args, device, accuracy: bool = True) -> SGDSolver:
    """The paper's SGD solver (its momentum, weight decay, display) on the bench's net, as the training script
    builds it (no activation diffs kept, labels checked by the loader); `accuracy=False` leaves out the net's
    Accuracy layers (the hand-written net computes none)."""
    paper = read_solver(ROOT / "prototxt" / "solver_softmax.prototxt")
    param = caffe_pb2.SolverParameter(base_lr=paper.base_lr, lr_policy="fixed", momentum=paper.momentum,
                                      weight_decay=paper.weight_decay, display=paper.display,
                                      average_loss=paper.average_loss, max_iter=10 ** 9)
    net_param = engine_net_param(args)
    if not accuracy:
        layers = [lp for lp in net_param.layer if lp.type != "Accuracy"]
        del net_param.layer[:]
        net_param.layer.extend(layers)
    param.net_param.CopyFrom(net_param)
    return SGDSolver(solver_param=param, device=device, blob_diffs=False, label_checks=False)


def per_step_counts(step, steps: int = 2) -> tuple[float, float]:
    """(aten ops, host syncs) per call of `step`, over `steps` calls."""
    with OpCounter() as count:
        for _ in range(steps):
            step()
    return count.ops / steps, count.syncs / steps


def engine_net_param(args):
    path = ROOT / "prototxt" / "ResNet-20_softmax.prototxt"
    if path.exists():
        param, _ = read_net(path)
    else:
        param, _ = parse_net_text(generated_prototxt(args.embedding, args.classes))
    for lp in param.layer:
        if lp.type == "Input":
            del lp.input_param.shape[:]
            lp.input_param.shape.add().dim.extend([args.batch, 1, args.frames, args.freq])
            lp.input_param.shape.add().dim.extend([args.batch, 1, 1, 1])
        if lp.name == "res4_3p":
            lp.pooling_param.kernel_h = ResNet20(args.frames, args.freq, 1, 1).pool_h
        if lp.name == "fc5":
            lp.inner_product_param.num_output = args.embedding
        if lp.name == "fc6":
            lp.inner_product_param.num_output = args.classes
    return param


def device_sync(device: torch.device, cuda=torch.cuda):
    """A function that waits for `device` (the benchmarked one, not torch's current device). (`cuda` is
    torch.cuda; tests pass a stand-in.)"""
    if device.type != "cuda":
        return lambda: None
    return lambda: cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="examples per iteration (paper: 50)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--frames", type=int, default=300, help="spectrogram frames (input height)")
    parser.add_argument("--freq", type=int, default=257, help="frequency bins (input width)")
    parser.add_argument("--embedding", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1251)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device.index)
    sync = device_sync(device)

    caffe.set_random_seed(0)
    solver = build_engine_solver(args, device)
    net = solver.net
    model = ResNet20(args.frames, args.freq, args.embedding, args.classes).to(device)
    model.copy_from_net(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, args.frames, args.freq, generator=gen).to(device)
    label = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    net.blobs["data"].tensor = x
    net.blobs["label"].tensor = label.to(torch.float32).reshape(args.batch, 1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=solver.param.base_lr, momentum=solver.param.momentum,
                                weight_decay=solver.param.weight_decay, foreach=True)

    def engine_step():
        solver.step(1)

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        model(x, label).backward()
        optimizer.step()

    # the same layers as the hand-written net: the prototxt's training Accuracy layers left out (same weights)
    same = build_engine_solver(args, device, accuracy=False)
    with torch.no_grad():
        for name, blobs in net.params.items():
            for mine, theirs in zip(same.net.params[name], blobs):
                mine.tensor.copy_(theirs.tensor)
    same.net.blobs["data"].tensor, same.net.blobs["label"].tensor = x, net.blobs["label"].tensor

    # same weights, same input: the losses must agree before their speeds mean anything
    with torch.no_grad():
        torch_loss = float(model(x, label))
        engine_loss, same_loss = (float(n.forward_range(0, len(n.modules) - 1)) for n in (net, same.net))
    for loss in (engine_loss, same_loss):
        if abs(loss - torch_loss) > 1e-3 * max(1.0, abs(torch_loss)):
            print(f"loss mismatch: engine {loss} vs hand-written {torch_loss}", file=sys.stderr)
            return 1

    def engine_same_step():
        same.step(1)

    with tf32_scope(False):            # fp32 as it says, whatever torch's cuDNN default
        times = interleaved_times({"engine": engine_step, "engine_same_layers": engine_same_step,
                                   "torch": torch_step}, args.iters, warmup=args.warmup, sync=sync, alternate=True)
        counts = {name: per_step_counts(step) for name, step in
                  (("engine", engine_step), ("engine_same_layers", engine_same_step), ("torch", torch_step))}
    t_engine, t_same, t_torch = (statistics.median(times[name]) for name in ("engine", "engine_same_layers", "torch"))
    n = args.batch
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch, "iters": args.iters,
        "input": [1, args.frames, args.freq], "loss": engine_loss, "precision": "fp32 (TF32 off)",
        "cpu": cpu_capability(), "timing": "median of alternating iterations",
        "engine_examples_per_s": n / t_engine, "torch_examples_per_s": n / t_torch,
        "engine_same_layers_examples_per_s": n / t_same,
        "ratio_engine_over_torch": t_torch / t_engine, "ratio_engine_same_layers_over_torch": t_torch / t_same,
        "display": solver.param.display,
        "note": "engine: the prototxt as trained (its top1/top5 Accuracy layers included); engine_same_layers: "
                "without them, the hand-written net's layers" if "top1Accuracy" in net._layer_names else "",
    }
    for name in ("engine", "engine_same_layers", "torch"):
        result[f"{name}_aten_ops_per_step"], result[f"{name}_syncs_per_step"] = counts[name]
    print(f"ResNet-20 training step (forward, backward, SGD update), batch {args.batch} x 1 x {args.frames} x "
          f"{args.freq}, median of {args.iters} alternating iters after {args.warmup} warm-up, {device} "
          f"({result['threads']} threads), fp32; CPU {result['cpu']}")
    rows = (("engine", "caffe_torch engine, prototxt as trained", "ratio_engine_over_torch"),
            ("engine_same_layers", "caffe_torch engine, no Accuracy layers", "ratio_engine_same_layers_over_torch"),
            ("torch", "hand-written torch", None))
    for name, label, ratio in rows:
        if name == "engine_same_layers" and "top1Accuracy" not in net._layer_names:
            continue
        line = (f"  {label:40}: {result[f'{name}_examples_per_s']:8.2f} examples/s, "
                f"{result[f'{name}_aten_ops_per_step']:7.1f} aten ops/step, "
                f"{result[f'{name}_syncs_per_step']:.3f} host syncs/step")
        if ratio:
            line += (f"; vs hand-written {result[ratio]:.3f} (throughput), "
                     f"{result[f'{name}_aten_ops_per_step'] / result['torch_aten_ops_per_step']:.3f} (aten ops)")
        print(line)
    print(f"  the engine reads the loss every {solver.param.display} steps (display)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

