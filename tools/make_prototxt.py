"""Write the shipped prototxt files (prototxt/, prototxt/demo/, prototxt/verification/, prototxt/vox2/) from the
paper.

The files it writes are ordinary Caffe prototxt: users change losses, widths or dropout by editing a copy
of their own. The shipped files are this script's output (tests/test_make_prototxt.py runs --check, so a hand
edit of a shipped file fails the suite): a change to them is made here, then all are regenerated
(python tools/make_prototxt.py; --check exits 1 if a file differs). It keeps the 25 net/solver pairs
consistent with each other.

The network (the paper, arXiv 1807.08312, and its published prototxt): ResNet-20 without batch norm. Four
stages; each starts with a stride-2 3x3 conv (xavier weights, bias lr_mult 2 / decay_mult 0) and continues
with residual units of two 3x3 convs (gaussian std 0.01 weights, bias frozen at 0), every conv followed by a
channel-wise PReLU; then average pooling over all time (kernel_h = frames / 16, kernel_w 1) -> "res4_3p", the
embedding fc5, and the loss head.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    frames: int                 # spectrogram frames (input height); crop = 160 * (frames - 1) + 401 samples
    widths: tuple[int, ...]     # channels of the four stages
    units: tuple[int, ...]      # residual units per stage
    embedding: int
    classes: int


PAPER = Size("paper", batch=50, frames=300, widths=(64, 128, 256, 512), units=(1, 2, 4, 1), embedding=512,
             classes=1251)
# The paper's verification training: the same nets on the 1,211 speakers outside the 40 verification test
# speakers (trainAug.py --mode verification), so stage 2 starts from a stage 1 with the same fc6 shape.
VERIFICATION = Size("verification", batch=50, frames=300, widths=PAPER.widths, units=PAPER.units,
                    embedding=512, classes=1211)
# Today's training data (docs/voxceleb2.md): the same nets on VoxCeleb2 dev (5,994 speakers) and on
# VoxCeleb2 dev + VoxCeleb1 dev (7,205 = 5,994 + 1,211), tested on VoxCeleb1-O/E/H.
VOX2 = Size("vox2", batch=50, frames=300, widths=PAPER.widths, units=PAPER.units, embedding=512, classes=5994)
VOX12 = Size("vox12", batch=50, frames=300, widths=PAPER.widths, units=PAPER.units, embedding=512, classes=7205)
# Trains on 2 CPU cores in minutes: same depth and structure, a quarter of the frames, an eighth of the width.
DEMO = Size("demo", batch=24, frames=100, widths=(8, 16, 32, 64), units=(1, 2, 4, 1), embedding=64, classes=30)


def _pooled_height(frames: int) -> int:
    h = frames
    for _ in range(4):
        h = (h + 2 - 3) // 2 + 1           # 3x3 conv, pad 1, stride 2
    return h


def _conv(name, bottom, num_output, stride, first: bool) -> str:
    if first:
        weight = 'weight_filler { type: "xavier" }'
        params = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }"
    else:
        weight = 'weight_filler { type: "gaussian" std: 0.01 }'
        params = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }"
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f"  {params}\n"
            f"  convolution_param {{ num_output: {num_output} kernel_size: 3 stride: {stride} pad: 1\n"
            f'    {weight} bias_filler {{ type: "constant" value: 0 }} }} }}\n'
            f'layer {{ name: "relu{name[4:]}" type: "PReLU" bottom: "{name}" top: "{name}" }}\n')


def trunk(size: Size) -> tuple[str, str]:
    """The ResNet-20 trunk up to res4_3p; returns (text, name of the last blob)."""
    out = []
    bottom = "data"
    for stage, (width, units) in enumerate(zip(size.widths, size.units), start=1):
        first = f"conv{stage}_1"
        out.append(f"# ---- stage {stage}: {width} channels, {units} residual unit(s)\n")
        out.append(_conv(first, bottom, width, 2, first=True))
        unit_input = first
        k = 2
        for _ in range(units):
            a, b = f"conv{stage}_{k}", f"conv{stage}_{k + 1}"
            out.append(_conv(a, unit_input, width, 1, first=False))
            out.append(_conv(b, a, width, 1, first=False))
            res = f"res{stage}_{k + 1}"
            out.append(f'layer {{ name: "{res}" type: "Eltwise" bottom: "{unit_input}" bottom: "{b}" '
                       f'top: "{res}" eltwise_param {{ operation: SUM }} }}\n')
            unit_input = res
            k += 2
        bottom = unit_input
    pooled = _pooled_height(size.frames)
    out.append(f"# ---- average over all {pooled} time steps, keep the frequency axis\n")
    out.append(f'layer {{ name: "res4_3p" type: "Pooling" bottom: "{bottom}" top: "res4_3p"\n'
               f"  pooling_param {{ pool: AVE kernel_h: {pooled} kernel_w: 1 stride: 1 }} }}\n")
    return "".join(out), "res4_3p"


def _header(size: Size, loss: str, note: str) -> str:
    crop = 160 * (size.frames - 1) + 401
    suffix = {"demo": "_demo", "verification": "_verification", "vox2": "_vox2", "vox12": "_vox12"}.get(size.name, "")
    return (f'name: "ResNet-20_{loss}{suffix}"\n'
            f"# {note}\n"
            f"# Input: {size.batch} spectrograms of {size.frames} frames x 257 bins ({crop}-sample crops);\n"
            f"# the training scripts take batch size and crop length from this layer.\n"
            f'layer {{ name: "data" type: "Input" top: "data" top: "label"\n'
            f"  input_param {{ shape {{ dim: {size.batch} dim: 1 dim: {size.frames} dim: 257 }}\n"
            f"                shape {{ dim: {size.batch} dim: 1 dim: 1 dim: 1 }} }} }}\n")


def _fc5(size: Size, stage2: bool) -> str:
    # stage 1: weights lr 2 / decay 2 (the original's prototxt); LM fine-tuning: weights 2 / 0, bias 1 / 0.
    params = ("param { lr_mult: 2 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }" if stage2
              else "param { lr_mult: 2 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }")
    return (f"# ---- embedding ({size.embedding}-D: edit num_output for 128-D)\n"
            "# Dropout on res4_3p (helped verification, hurt identification in the paper): insert\n"
            '#   layer { name: "drop" type: "Dropout" bottom: "res4_3p" top: "res4_3p" dropout_param '
            "{ dropout_ratio: 0.5 } }\n"
            f'layer {{ name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5"\n  {params}\n'
            f"  inner_product_param {{ num_output: {size.embedding}\n"
            '    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } } }\n')


def _accuracy(scores: str) -> str:
    return (f'layer {{ name: "top1Accuracy" type: "Accuracy" bottom: "{scores}" bottom: "label" '
            'top: "top1Accuracy" }\n'
            f'layer {{ name: "top5Accuracy" type: "Accuracy" bottom: "{scores}" bottom: "label" '
            'top: "top5Accuracy" accuracy_param { top_k: 5 } }\n')


def _classes_note(size: Size) -> str:
    what = {"paper": ": VoxCeleb1 identification; prototxt/verification/ has the 1211-class nets",
            "verification": ": VoxCeleb1 verification training, the 40 test speakers held out",
            "vox2": ": VoxCeleb2 dev",
            "vox12": ": VoxCeleb2 dev + VoxCeleb1 dev"}.get(size.name, "")
    return f"# ---- classifier: num_output = number of training speakers ({size.classes}{what})\n"


def head(loss: str, size: Size) -> str:
    c = size.classes
    if loss == "softmax":
        return (_fc5(size, False) + _classes_note(size) +
                'layer { name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"\n'
                "  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }\n"
                f"  inner_product_param {{ num_output: {c}\n"
                '    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } } }\n'
                'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" '
                'top: "softmax_loss" }\n' + _accuracy("fc6"))
    if loss == "lm":
        return (_fc5(size, True) +
                'layer { name: "fc5_norm" type: "Normalize" bottom: "fc5" top: "fc5_norm" }\n' +
                _classes_note(size) +
                "# fc6 keeps its stage-1 name and shape, so copy_from starts it from the softmax weights\n"
                'layer { name: "fc6" type: "InnerProduct" bottom: "fc5_norm" top: "fc6"\n'
                "  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }\n"
                f"  inner_product_param {{ num_output: {c}\n"
                '    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } } }\n'
                "# per-class learned scale (init 50) with bias, then the logistic margin -30\n"
                'layer { name: "fc6_scale" type: "Scale" bottom: "fc6" top: "fc6_scale"\n'
                "  param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }\n"
                '  scale_param { filler { type: "constant" value: 50 } bias_term: true\n'
                '    bias_filler { type: "constant" value: 0 } } }\n'
                'layer { name: "fc6_margin" type: "LabelSpecificAdd" bottom: "fc6_scale" bottom: "label" '
                'top: "fc6_margin"\n  label_specific_add_param { bias: -30 } }\n'
                'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin" bottom: "label" '
                'top: "softmax_loss" }\n' + _accuracy("fc6"))
    if loss == "amsoftmax":
        return (_fc5(size, True) +
                'layer { name: "fc5_norm" type: "Normalize" bottom: "fc5" top: "fc5_norm" }\n' +
                _classes_note(size) +
                "# renamed from fc6, so it starts from its filler (unit-norm rows: cosine logits)\n"
                'layer { name: "fc6_12" type: "InnerProduct" bottom: "fc5_norm" top: "fc6_12"\n'
                "  param { lr_mult: 1 decay_mult: 1 }\n"
                f"  inner_product_param {{ num_output: {c} bias_term: false normalize: true\n"
                '    weight_filler { type: "xavier" } } }\n'
                "# s = 30 (learned per class, with bias), m = 0.35: LabelSpecificAdd bias = -m * s\n"
                'layer { name: "fc6_scale" type: "Scale" bottom: "fc6_12" top: "fc6_scale"\n'
                "  param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }\n"
                '  scale_param { filler { type: "constant" value: 30 } bias_term: true\n'
                '    bias_filler { type: "constant" value: 0 } } }\n'
                'layer { name: "fc6_margin" type: "LabelSpecificAdd" bottom: "fc6_scale" bottom: "label" '
                'top: "fc6_margin"\n  label_specific_add_param { bias: -10.5 } }\n'
                'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin" bottom: "label" '
                'top: "softmax_loss" }\n' + _accuracy("fc6_12"))
    if loss == "asoftmax":
        return (_fc5(size, True) + _classes_note(size) +
                "# A-Softmax (m = 4) in TRAIN. The margin needs the label and would distort the scores of a\n"
                "# TEST net, so TEST uses a plain inner product with the same (normalised) weights: same layer\n"
                "# name, same single blob, so test nets share it and copy_from fills both.\n"
                'layer { name: "fc6_asoftmax" type: "MarginInnerProduct" bottom: "fc5" bottom: "label"\n'
                '  top: "fc6_asoftmax" top: "lambda" include { phase: TRAIN }\n'
                "  param { lr_mult: 1 decay_mult: 1 }\n"
                f"  margin_inner_product_param {{ num_output: {c} type: QUADRUPLE\n"
                '    weight_filler { type: "xavier" }\n'
                "    base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 0 } }\n"
                'layer { name: "fc6_asoftmax" type: "InnerProduct" bottom: "fc5" top: "fc6_asoftmax"\n'
                "  include { phase: TEST } param { lr_mult: 1 decay_mult: 1 }\n"
                f"  inner_product_param {{ num_output: {c} bias_term: false\n"
                '    weight_filler { type: "xavier" } } }\n'
                'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_asoftmax" bottom: "label" '
                'top: "softmax_loss" }\n' + _accuracy("fc6_asoftmax"))
    if loss == "aam":
        return (_fc5(size, True) +
                'layer { name: "fc5_norm" type: "Normalize" bottom: "fc5" top: "fc5_norm" }\n' +
                _classes_note(size) +
                "# caffe_torch EXTENSION (in neither 2017 fork): additive angular margin (ArcFace / AAM-Softmax)\n"
                "# cos(theta + 0.2) for the target class in TRAIN, then a fixed scale of 30.\n"
                'layer { name: "fc6_aam" type: "InnerProduct" bottom: "fc5_norm" top: "fc6_aam"\n'
                "  param { lr_mult: 1 decay_mult: 1 }\n"
                f"  inner_product_param {{ num_output: {c} bias_term: false normalize: true\n"
                '    weight_filler { type: "xavier" } } }\n'
                'layer { name: "fc6_angular" type: "AdditiveAngularMargin" bottom: "fc6_aam" bottom: "label" '
                'top: "fc6_angular"\n  additive_angular_margin_param { margin: 0.2 } }\n'
                'layer { name: "fc6_scale" type: "Scale" bottom: "fc6_angular" top: "fc6_scale"\n'
                "  param { lr_mult: 0 decay_mult: 0 }\n"
                '  scale_param { filler { type: "constant" value: 30 } } }\n'
                'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_scale" bottom: "label" '
                'top: "softmax_loss" }\n' + _accuracy("fc6_aam"))
    raise ValueError(loss)


NOTES = {
    "softmax": "Stage 1: ResNet-20 + softmax cross-entropy.",
    "lm": "Stage 2: logistic margin (the paper's main loss): Normalize -> fc6 -> per-class Scale -> "
          "LabelSpecificAdd(-30).",
    "amsoftmax": "Stage 2: AM-Softmax (happynear fork layers): Normalize -> normalised fc6 -> Scale -> "
                 "LabelSpecificAdd.",
    "asoftmax": "Stage 2: A-Softmax (SphereFace fork's MarginInnerProduct, m = 4, lambda annealed 1000 -> 5).",
    "aam": "Stage 2 (our extension, not in the paper): additive angular margin.",
}
PREFIX = {"softmax": "ResNet-20_512D", "lm": "LM_512D_30", "amsoftmax": "AM_512D_30",
          "asoftmax": "A-Softmax_512D", "aam": "AAM_512D_30"}


def solver(loss: str, size: Size, net_file: str) -> str:
    stage1 = loss == "softmax"
    if size.name != "demo":
        base_lr, stepsize, max_iter = (0.05 if stage1 else 0.005), 2800, 61600
        display, snapshot = 100, 5600
        note = ("# The paper's solver. Original stage 1 snapshotted only at 61600; 5600 here so that a killed\n"
                "# job loses little (the scripts also snapshot on SIGTERM/SIGUSR1/SIGUSR2).\n")
    else:
        base_lr, stepsize, max_iter = (0.05 if stage1 else 0.001), 150, (600 if stage1 else 300)
        display, snapshot = 50, 150
        note = "# Demo: the paper's solver scaled down to a few minutes on 2 CPU cores.\n"
        if not stage1:
            # Measured on the demo corpus: at the paper's 0.005 the first steps of fine-tuning (loss gradients
            # x50 from the scale, momentum 0.93, batch 24) throw fc6 far off and 300 iterations don't recover
            # (LM: loss 32 -> 87, validation top-1 0.03); the paper's 61,600 iterations have time to.
            note += "# Stage 2 base_lr 0.001 instead of the paper's 0.005: 300 iterations can't absorb the start-up.\n"
    if size.name == "demo":
        prefix = PREFIX[loss].replace("512D", f"{size.embedding}D") + "_demo"
    else:
        prefix = PREFIX[loss] + ("" if size.name == "paper" else f"_{size.name}")
    return (f"# {NOTES[loss]}\n{note}"
            f'net: "{net_file}"\n'
            "# Validation (top-1/top-5 on split 2) is run by the training script every --test-interval.\n"
            f'type: "SGD"\nbase_lr: {base_lr}\nlr_policy: "step"\ngamma: 0.75\nstepsize: {stepsize}\n'
            f"max_iter: {max_iter}\nmomentum: 0.93\nweight_decay: 0.0005\niter_size: 1\n"
            f"display: {display}\naverage_loss: {display}\nsnapshot: {snapshot}\n"
            f'snapshot_prefix: "result/{prefix}"\nsolver_mode: GPU\n')


def files() -> dict[Path, str]:
    out = {}
    for size, folder in ((PAPER, ROOT / "prototxt"), (DEMO, ROOT / "prototxt" / "demo"),
                         (VERIFICATION, ROOT / "prototxt" / "verification"),
                         (VOX2, ROOT / "prototxt" / "vox2" / "5994"), (VOX12, ROOT / "prototxt" / "vox2" / "7205")):
        for loss in ("softmax", "lm", "amsoftmax", "asoftmax", "aam"):
            net_name = f"ResNet-20_{loss}.prototxt"
            body, _ = trunk(size)
            header = ("# Generated by tools/make_prototxt.py from the paper's description. To experiment, edit a "
                      "copy:\n# a hand edit of this file fails tests/test_make_prototxt.py.\n")
            out[folder / net_name] = header + _header(size, loss, NOTES[loss]) + body + head(loss, size)
            rel = str((folder / net_name).relative_to(ROOT))
            out[folder / f"solver_{loss}.prototxt"] = header + solver(loss, size, rel)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a shipped file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in files().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT))
    if stale:
        print("differs from tools/make_prototxt.py:", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
