"""A plain pycaffe script: writes a net with NetSpec (with a Python layer), trains it with SGDSolver on
synthetic data, saves it, and writes what it saw to OUT/result.json. Runs unchanged on the real pycaffe
and under `python -m caffe_torch`."""

import argparse
import json
import os

import caffe
import numpy as np
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2

BATCH, FEATURES, HIDDEN, CLASSES = 8, 6, 10, 3


def make_net():
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[BATCH, FEATURES]), dict(dim=[BATCH])], ntop=2)
    n.ip1 = L.InnerProduct(n.data, num_output=HIDDEN, param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.scaled = L.Python(n.ip1, module="scale_layer", layer="LearnedScale", param_str='{"init": 0.5}')
    n.act = L.TanH(n.scaled)
    n.pool = L.Pooling(L.Reshape(n.act, shape=dict(dim=[BATCH, 1, 2, 5])), pool=P.Pooling.MAX,
                       kernel_h=1, kernel_w=2, stride_h=1, stride_w=1)
    n.ip2 = L.InnerProduct(n.pool, num_output=CLASSES)
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="folder for net.prototxt, solver.prototxt, trained.caffemodel, result.json")
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    net_path = os.path.join(args.out, "net.prototxt")
    with open(net_path, "w") as f:
        f.write(str(make_net()))
    solver_param = caffe_pb2.SolverParameter(
        train_net=net_path, base_lr=0.1, momentum=0.9, weight_decay=1e-3, lr_policy="step", gamma=0.5,
        stepsize=10, max_iter=args.iters, display=0, snapshot_prefix=os.path.join(args.out, "snap"))
    solver_path = os.path.join(args.out, "solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(str(solver_param))

    caffe.set_mode_cpu()
    solver = caffe.SGDSolver(solver_path)
    rng = np.random.RandomState(7)
    for name in ("ip1", "ip2"):
        weights, bias = solver.net.params[name]
        weights.data[...] = rng.normal(0, 0.5, size=weights.data.shape)
        bias.data[...] = rng.uniform(-0.1, 0.1, size=bias.data.shape)
    centres = rng.normal(0, 1, size=(CLASSES, FEATURES))
    gradient_calls = []
    solver.add_callback(lambda: None, lambda: gradient_calls.append(solver.iter))

    losses, scales = [], []
    for _ in range(args.iters):
        label = rng.randint(0, CLASSES, size=BATCH)
        solver.net.blobs["data"].data[...] = centres[label] + rng.normal(0, 0.3, size=(BATCH, FEATURES))
        solver.net.blobs["label"].data[...] = label
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        scales.append(float(solver.net.params["scaled"][0].data[0]))
    solver.net.save(os.path.join(args.out, "trained.caffemodel"))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"engine": caffe.__name__, "losses": losses, "scales": scales, "iter": solver.iter,
                   "gradient_calls": gradient_calls}, f)


if __name__ == "__main__":
    main()
