"""Comparing what the two engines did with a case, and explaining the divergences that are known.

Tolerance. Every numeric array (each blob's data and diff, each param's data and diff, kept arrays, forward
outputs, after every stage) must satisfy caffe_facts.RTOL:  max|ours - Caffe| <= 1e-5 * max|Caffe|. Where it
does not, caffe_torch's float64 run of the same case is the referee: an array whose float32 result is itself far
from the float64 one is ill-conditioned at this input (a Softmax of large logits, a variance of nearly equal
values, a solver amplifying over steps), and Caffe's float32 result then only has to be as close to the float64
one as caffe_torch's is, up to CONDITION_FACTOR:
    rel(Caffe, ref64) <= max(RTOL, CONDITION_FACTOR * rel(ours, ref64)).
caffe_torch's float32 result can be exact where Caffe's is not (a mean of equal values summed in another order is
exact; its BatchNorm or MVN then gives 0 where Caffe's gives the rounding of the mean, amplified by 1/sqrt(eps)).
The second referee measures how far float32 rounding can move the exact result: the float64 run again, with the
result of every rounding operation perturbed by up to one float32 rounding (rounding.py). Caffe's result is also
accepted when it lies that close to the float64 one, up to CONDITION_FACTOR:
    max|Caffe - ref64| <= CONDITION_FACTOR * max|perturbed64 - ref64|,
the largest over up to ROUNDING_DRAWS draws of the rounding's random signs. The referees run only for an array
that fails the first test (judge()).
Names (blobs, layers, inputs, outputs), shapes, the solver's iteration and integer outputs compare exactly, but for
an ArgMax's indices at a tie: there the values they select must agree (_argmax_tie).

Refusals. Both engines must complete the same stages. Where Caffe aborts (a CHECK or LOG(FATAL)), caffe_torch
must raise one of its own errors (CaffeError: LayerError, PrototxtError, WeightsError) with a one-line message
naming a layer of the net (or the solver / its file), at the same stage; an engine-internal exception (IndexError,
RuntimeError ...) is a divergence. A refusal by one engine only is a divergence.

Classification. Each divergence found gets a class: a quirk of the real build (caffe_facts.QUIRKS),
"refused-earlier" (caffe_torch's own check refused the case at an earlier stage than the one where Caffe aborts:
bad input is refused before long work starts), or "" (unexplained).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from google.protobuf import text_format

from caffe_torch.errors import CaffeError, PrototxtError
from caffe_torch.net import filter_layers, upgrade_inputs
from caffe_torch.proto import caffe_pb2
from caffe_torch.prototxt import Source
from caffe_torch.splits import insert_splits

from ..caffe_facts import QUIRKS, RTOL, rel_err
from .builder import IGNORES_PROPAGATE_DOWN, SHARING_TYPES
from .program import Program, stale_view_blobs
from .rounding import FLOAT32_ROUNDING
from .worker import EngineResult

CONDITION_FACTOR = 10.0
ROUNDING_DRAWS = 8      # runs of the rounding referee at most (judge)
# the same refusal in the engines' words, where Caffe's (a LOG(FATAL) of the layer's Backward) names no blob:
# (Caffe's message, caffe_torch's error), as regular expressions
SAME_REFUSALS = (
    (r"cannot backpropagate to label inputs", r"Caffe cannot back-propagate to bottom \d"),
)
HEAP_CRASH = re.compile(r"free\(\)|double free|corrupted|Segmentation|malloc")    # glibc's words when the heap breaks
# glog's CHECK_EQ/GE... abort: the condition, the two values, then the layer's own words
CHECK_MESSAGE = re.compile(r"Check failed: .*? \([^()]*\) (.+)$", re.S)
SPLIT_NAME = re.compile(r"_split(_\d+)?$")     # Caffe's InsertSplits names: <blob>_<layer>_<i>_split[_<j>]
DIFF_SHARING = ("Reshape", "Concat", "Slice", "Parameter")    # their top shares its bottom's diff (caffe_facts)
OUR_ERRORS = {"CaffeError", "LayerError", "PrototxtError", "WeightsError"}
# the quirks that show in a solver's test net too: a forward's scratch diff, the trained params' values, a loss
# weight set up in a diff-sharing top's diff
TEST_NET_QUIRKS = ("hinge-scratch-diff", "parameter-top-diff", "shared-blob-memory-test")

@dataclass
class Divergence:
    stage: str          # the stage where it shows
    what: str           # refusal | refusal-message | names | shape | value | missing
    key: str            # the observation (e.g. blob/diff/conv3) or the engines' ends
    detail: str
    cls: str = ""       # quirk id, "refused-earlier", or "" (unexplained)
    ours_zero: bool = False            # a value divergence where caffe_torch's array is all zero
    nan_only: bool = False             # ... where Caffe's has NaNs that caffe_torch's has not, and they agree elsewhere
    nan_over_zero: bool = False        # ... and caffe_torch's is 0 wherever Caffe's is NaN
    ours_nan_only: bool = False        # ... where caffe_torch's has NaNs (all of Caffe's and more), agreeing elsewhere
    refused_earlier: bool = False      # caffe_torch raised its own error before the stage where Caffe aborts
    lists: tuple = ()                  # a names divergence: (ours, Caffe's)

    def __str__(self) -> str:
        tag = f" [{self.cls}]" if self.cls else ""
        return f"{self.stage} {self.what} {self.key}: {self.detail}{tag}"


def _layer_names(prog: Program) -> list[str]:
    return [lp.name for lp in prog.net_param().layer]


def _names_a_layer(message: str, prog: Program) -> bool:
    low = message.lower()
    return any(f"'{n}'" in message or f'"{n}"' in message for n in _layer_names(prog)) or \
        "solver" in low or ".prototxt" in low


def compare_results(prog: Program, theirs: EngineResult, ours: EngineResult,
                    ref: EngineResult | None = None, spreads: tuple[EngineResult, ...] = ()) -> list[Divergence]:
    """Every divergence between Caffe's result (`theirs`) and caffe_torch's (`ours`); `ref` is caffe_torch's float64
    run, `spreads` its float64 runs with float32's rounding simulated (see the module docstring)."""
    out: list[Divergence] = []
    n = min(len(theirs.stages), len(ours.stages))
    if theirs.stages[:n] != ours.stages[:n]:
        out.append(Divergence("build", "refusal", "stages", f"{ours.stages} vs Caffe {theirs.stages}"))
        return out
    stage_after = theirs.stages[n] if len(theirs.stages) > n else (
        ours.stages[n] if len(ours.stages) > n else "end")
    if len(theirs.stages) != len(ours.stages) or (theirs.end == "done") != (ours.end == "done"):
        where = theirs.stages[n - 1] if n else "build"
        out.append(Divergence(stage_after if stage_after != "end" else where, "refusal", "end",
                              f"caffe_torch {_end(ours)} after {ours.stages[-1:] or ['nothing']}; Caffe "
                              f"{_end(theirs)} after {theirs.stages[-1:] or ['nothing']}",
                              refused_earlier=ours.end == "error" and ours.error_type in OUR_ERRORS
                              and theirs.end == "abort" and len(ours.stages) < len(theirs.stages)))
    elif theirs.end != "done":
        if theirs.end == "abort" and (ours.error_type not in OUR_ERRORS or "\n" in ours.message.strip()
                                       or not _names_a_layer(ours.message, prog)):
            out.append(Divergence(stage_after, "refusal-message", ours.error_type,
                                  f"Caffe aborts ({theirs.message[:200]}); caffe_torch raises {ours.error_type}: "
                                  f"{ours.message[:300]}"))
        elif theirs.end == "abort" and prog.expect_field and prog.expect_field not in ours.message and \
                not _names_what_caffe_names(theirs.message, ours.message):
            out.append(Divergence(stage_after, "refusal-message", ours.error_type,
                                  f"caffe_torch's error does not name the field '{prog.expect_field}' "
                                  f"({prog.invalid}): {ours.message[:300]}"))
    keys = [k for k in theirs.obs if k.split("/", 1)[0] in theirs.stages[:n]]
    ours_keys = {k for k in ours.obs if k.split("/", 1)[0] in ours.stages[:n]}
    for k in sorted(ours_keys - set(theirs.obs)):
        out.append(Divergence(k.split("/", 1)[0], "missing", k.split("/", 1)[1], "only in caffe_torch"))
    for k in keys:
        stage, key = k.split("/", 1)
        if k not in ours.obs:
            out.append(Divergence(stage, "missing", key, "only in Caffe"))
            continue
        a, b = np.asarray(ours.obs[k]), np.asarray(theirs.obs[k])
        if "names/" in key or a.dtype.kind in "USO" or b.dtype.kind in "USO":
            if a.shape != b.shape or not np.array_equal(a, b):
                out.append(Divergence(stage, "names", key, f"{list(a)} vs Caffe {list(b)}",
                                      lists=(list(map(str, a)), list(map(str, b)))))
            continue
        if a.shape != b.shape:
            out.append(Divergence(stage, "shape", key, f"{a.shape} vs Caffe {b.shape}"))
            continue
        err = rel_err(a, b)
        if err <= RTOL or _argmax_tie(prog, stage, key, ours, theirs):
            continue
        if ref is not None and k in ref.obs and np.asarray(ref.obs[k]).shape == b.shape:
            r = np.asarray(ref.obs[k], dtype=np.float64)
            ours_err, theirs_err = rel_err(a.astype(np.float64), r), rel_err(b.astype(np.float64), r)
            if theirs_err <= max(RTOL, CONDITION_FACTOR * ours_err):
                continue
            detail = f"relative difference {err:.3g} (Caffe vs float64 {theirs_err:.3g}, ours {ours_err:.3g})"
            moved = [np.asarray(sp.obs[k]) for sp in spreads if k in sp.obs and np.shape(sp.obs[k]) == b.shape]
            if moved:
                caffe_dev, spread_dev = _deviation(b, r), max(_deviation(m, r) for m in moved)
                if caffe_dev <= CONDITION_FACTOR * spread_dev:
                    continue
                detail += f"; largest deviation from float64: Caffe {caffe_dev:.3g}, perturbed {spread_dev:.3g}"
        else:
            detail = f"relative difference {err:.3g}"
        theirs_nan = np.isnan(b) if b.dtype.kind == "f" else np.zeros(b.shape, bool)
        nan_only = bool(theirs_nan.any()) and not np.isnan(a[~theirs_nan]).any() and \
            rel_err(a[~theirs_nan], b[~theirs_nan]) <= RTOL
        ours_nan = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
        ours_nan_only = bool((ours_nan & ~theirs_nan).any()) and not (theirs_nan & ~ours_nan).any() and \
            rel_err(a[~ours_nan], b[~ours_nan]) <= RTOL
        out.append(Divergence(stage, "value", key, detail, ours_zero=not a.any(), nan_only=nan_only,
                              nan_over_zero=nan_only and not a[theirs_nan].any(), ours_nan_only=ours_nan_only))
    return out


def _argmax_tie(prog: Program, stage: str, key: str, ours: EngineResult, theirs: EngineResult) -> bool:
    """`key` is an ArgMax top whose indices differ only where the values they select are equal within RTOL: a tie
    (or near tie) that each engine's float32 rounding of the bottom broke its own way. The selected values are
    compared in place of the indices (and the max values, where the top holds them too)."""
    if not key.startswith(("blob/data/", "forward/")) or '"ArgMax"' not in prog.net_text:
        return False            # (parsing the net per divergent array costs more than all the rest here)
    name = key.split("/")[-1]
    lp = next((lp for lp in prog.net_param().layer if lp.type == "ArgMax" and name in lp.top), None)
    bottom = f"{stage}/blob/data/{lp.bottom[0]}" if lp is not None and lp.bottom else ""
    if bottom not in theirs.obs or bottom not in ours.obs:
        return False
    ap = lp.argmax_param
    b_theirs, b_ours = np.asarray(theirs.obs[bottom]), np.asarray(ours.obs[bottom])
    t_theirs, t_ours = np.asarray(theirs.obs[f"{stage}/{key}"]), np.asarray(ours.obs[f"{stage}/{key}"])
    try:
        if ap.HasField("axis"):         # a top like the bottom, top_k along the axis: indices, or values only
            if ap.out_max_val:
                return False
            axis = ap.axis % b_theirs.ndim
            picked = [np.take_along_axis(b, t.astype(np.int64), axis) for b, t in
                      ((b_theirs, t_theirs), (b_ours, t_ours))]
            values_agree = True
        else:                           # N x (1 or 2) x top_k: the indices over each sample, then the values
            n, k = b_theirs.shape[0], ap.top_k
            t_theirs, t_ours = t_theirs.reshape(n, -1, k), t_ours.reshape(n, -1, k)
            picked = [np.take_along_axis(b.reshape(n, -1), t[:, 0].astype(np.int64), 1) for b, t in
                      ((b_theirs, t_theirs), (b_ours, t_ours))]
            values_agree = t_theirs.shape[1] == 1 or rel_err(t_ours[:, 1], t_theirs[:, 1]) <= RTOL
    except (IndexError, ValueError):
        return False
    return values_agree and rel_err(picked[1], picked[0]) <= RTOL


def _deviation(a: np.ndarray, ref: np.ndarray) -> float:
    """max|a - ref| (inf unless their NaNs and infinities are the same)."""
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a)
    if not np.array_equal(ok, np.isfinite(ref)) or not np.array_equal(a[~ok], ref[~ok], equal_nan=True):
        return float("inf")
    return float(np.abs(a[ok] - ref[ok]).max()) if ok.any() else 0.0


def judge(prog: Program, theirs: EngineResult, ours: EngineResult, run_reference) -> list[Divergence]:
    """compare_results with the referees called in only where a value differs: `run_reference(**changes)` runs the
    case, its Program fields changed so, on caffe_torch in float64: exact, then with float32's rounding simulated
    (perturb=FLOAT32_ROUNDING), up to ROUNDING_DRAWS draws of the random signs (rounding_draw) while a value is
    still unexplained: a kink (a ReLU of a sum that cancels) moves with the sign that one draw happens to give."""
    divs = compare_results(prog, theirs, ours)
    if any(d.what == "value" for d in divs):
        ref = run_reference()
        divs = compare_results(prog, theirs, ours, ref)
        spreads = ()
        for draw in range(ROUNDING_DRAWS):
            if not any(d.what == "value" for d in divs):
                break
            spreads += (run_reference(perturb=FLOAT32_ROUNDING, rounding_draw=draw),)
            divs = compare_results(prog, theirs, ours, ref, spreads)
    return divs


def _names_what_caffe_names(theirs: str, ours: str) -> bool:
    """Caffe's abort names blobs or layers ('b2', 'eucl5') and caffe_torch's error names them all, or caffe_torch's
    error says what Caffe's failed CHECK says: the mutation broke the net somewhere else than its field (a renamed
    top leaves a later bottom unknown), or the net already failed another check before it, and both say so."""
    names = set(re.findall(r"'([^'\s]+)'", theirs))
    return bool(names) and all(f"'{n}'" in ours for n in names) or _same_check(theirs, ours) or \
        any(re.search(caffe_says, theirs) and re.search(ours_says, ours) for caffe_says, ours_says in SAME_REFUSALS)


def _same_check(theirs: str, ours: str) -> bool:
    """Caffe's "Check failed: <condition> (<values>) <message>." whose message caffe_torch's error repeats. A plain
    CHECK(condition) prints no values ("Check failed: !(a || b) With Global_pooling: true Filter size cannot
    specified"): its message is then a tail of the line, of whole words (at least 3, and 20 characters), that
    caffe_torch's error repeats."""
    text = theirs.strip()
    m = CHECK_MESSAGE.match(text)
    if m:
        said = m.group(1).strip().rstrip(".").lower()
        return len(said) >= 20 and said in ours.lower()
    if not text.startswith("Check failed: "):
        return False
    words = text.removeprefix("Check failed: ").rstrip(".").lower().split()
    tails = (" ".join(words[i:]) for i in range(1, len(words) - 2))
    return any(len(tail) >= 20 and tail in ours.lower() for tail in tails)


def _end(r: EngineResult) -> str:
    if r.end == "done":
        return "completes"
    if r.end == "error":
        return f"raises {r.error_type}: {r.message[:200]}"
    return f"{r.end}s: {r.message[:200]}"


# ------------------------------------------------------------------------------------------------ classes
def _shared_producer(lp) -> bool:
    return lp.type in SHARING_TYPES or (lp.type == "Concat" and len(lp.bottom) == 1) or \
        (lp.type == "Slice" and len(lp.top) == 1)


def _empty_window_possible(pp) -> bool:
    """A stride larger than the kernel on an axis without padding (see the quirk pooling-empty-window)."""
    if pp.global_pooling:
        return False
    k = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size, pp.kernel_size)
    s = (pp.stride_h, pp.stride_w) if pp.HasField("stride_h") else (pp.stride, pp.stride)
    p = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad)
    return any(s_ > k_ and not p_ for k_, s_, p_ in zip(k, s, p))


def _quirk_nets(net: caffe_pb2.NetParameter, prog: Program, shapes: dict[str, tuple]) -> set[str]:
    """The QUIRKS of caffe_facts that a net's structure sets off (it then may diverge in any value). `shapes`: the
    blobs' shapes where known."""
    found = set()
    for i, lp in enumerate(net.layer):
        # an LSTM over one time step: its exposed h_T is the unrolled net's h_1, which its output (a one-bottom
        # Concat of h_1) shares, so a layer computing in place on h_T rewrites the output too
        if lp.type == "LSTM" and lp.recurrent_param.expose_hidden and len(lp.top) > 1 and \
                shapes.get(lp.bottom[0], (0,))[0] == 1 and \
                any(lp.top[1] in later.bottom and lp.top[1] in later.top for later in net.layer[i + 1:]):
            found.add("shared-blob-memory")
    if prog.backward is not None:
        # the script writes a diff into every output: into the bottom's diff too where the output's layer shares
        # it, which a Split below then sums whether or not that layer's backward runs
        consumed = {b for lp in net.layer for b in lp.bottom}
        if any(lp.type in DIFF_SHARING and _shared_producer(lp) and set(lp.top) - consumed for lp in net.layer):
            found.add("shared-blob-memory")
    producer = {}
    consumed = {b for lp in net.layer for b in lp.bottom}
    for lp in net.layer:
        in_place = [b for j, b in enumerate(lp.bottom) if j < len(lp.top) and lp.top[j] == b]
        if lp.type == "Eltwise" and in_place and lp.eltwise_param.operation != caffe_pb2.EltwiseParameter.PROD:
            found.add("eltwise-in-place")
        if lp.type == "LRN" and in_place:
            found.add("lrn-in-place")
        if lp.type == "MVN" and in_place and lp.mvn_param.normalize_variance:
            found.add("mvn-in-place-variance")
        if in_place and (lp.type in ("BNLL", "Log") or lp.type == "ReLU" and lp.relu_param.negative_slope < 0 or
                         lp.type == "Power" and lp.power_param.power and lp.power_param.scale):
            found.add("neuron-in-place-backward")
        if lp.type in IGNORES_PROPAGATE_DOWN and not all(lp.propagate_down):
            found.add("ignores-propagate-down")
        if lp.type.endswith("Loss") and not len(lp.loss_weight) and lp.top and lp.top[0] in consumed:
            found.add("implicit-loss-top-read")
        if lp.type == "Pooling" and _empty_window_possible(lp.pooling_param):
            found.add("pooling-empty-window")
        if any(b in producer and _shared_producer(producer[b]) for b in in_place):
            found.add("shared-blob-memory")
        if any(w and j < len(lp.bottom) and lp.bottom[j] == t for j, (t, w) in enumerate(zip(lp.top, lp.loss_weight))):
            found.add("in-place-loss-weight")
        for t in lp.top:
            if t not in lp.bottom:
                producer[t] = lp
    return found


def _written_scale_diffs(net: caffe_pb2.NetParameter, shapes: dict[str, tuple]) -> dict[str, str]:
    """{Scale layer: quirk} for the Scales whose learned scale's diff Caffe writes instead of adding to: those whose
    scale starts at the bottom's first axis of size > 1 (outer_dim_ 1), unless it is one value over a larger
    bottom (scale-leading-axes-diff; scale-whole-bottom-diff where it covers the whole bottom). `shapes`: the blobs'
    shapes where known; without its bottom's shape a Scale counts only with an explicit `axis: 0`."""
    found = {}
    for lp in net.layer:
        sp = lp.scale_param
        if lp.type != "Scale" or len(lp.bottom) != 1:
            continue
        shape = shapes.get(lp.bottom[0])
        if shape is None:
            if sp.HasField("axis") and sp.axis == 0 and sp.num_axes != 0:
                found[lp.name] = "scale-leading-axes-diff"
            continue
        axis = sp.axis % len(shape) if shape else 0
        end = len(shape) if sp.num_axes == -1 else axis + sp.num_axes
        outer, scale, inner = (int(np.prod(shape[a:b])) for a, b in ((0, axis), (axis, end), (end, len(shape))))
        if outer == 1 and (inner == 1 or scale > 1):
            found[lp.name] = "scale-whole-bottom-diff" if inner == 1 else "scale-leading-axes-diff"
    return found


def blob_shapes(result: EngineResult | None) -> dict[str, tuple]:
    """{blob: shape} as an engine's first observation of each blob's data shows it."""
    shapes: dict[str, tuple] = {}
    for key, value in (result.obs.items() if result is not None else ()):
        rest = key.partition("/")[2]
        if rest.startswith("blob/data/"):
            shapes.setdefault(rest.removeprefix("blob/data/"), tuple(np.shape(value)))
    return shapes


def _quirk_keys(net: caffe_pb2.NetParameter, prog: Program, written_scales: dict[str, str]) -> dict[str, set[str]]:
    """Observation keys (without the stage) that a quirk of caffe_facts explains in this net."""
    keys: dict[str, set[str]] = {}
    consumed = {b for lp in net.layer for b in lp.bottom}
    # blobs sharing diff memory in Caffe's built net (Split tops included)
    diff_groups = _diff_groups(_caffe_layers(net, prog)) if any(lp.type in ("HingeLoss", *DIFF_SHARING)
                                                                 for lp in net.layer) else {}
    for lp in net.layer:
        weights = [w for w in lp.loss_weight]
        if lp.type in DIFF_SHARING and _shared_producer(lp) and any(weights):
            # the loss weight shows in every blob sharing that diff memory (a chain of Reshapes up to a Split top)
            shared = set().union(*(diff_groups.get(b, {b}) for b in (*lp.bottom, *lp.top)))
            keys.setdefault("shared-blob-memory", set()).update(f"blob/diff/{b}" for b in shared)
            # Net::Init writes the loss weight into the top's diff in a solver's test net too (Layer::SetLossWeights,
            # layer.hpp), where no backward ever replaces it
            keys.setdefault("shared-blob-memory-test", set()).update(f"blob/diff/{b}" for b in shared)
            keys["shared-blob-memory"].update(f"param/diff/{lp.name}/0" for _ in [0] if lp.type == "Parameter")
        if lp.type in DIFF_SHARING and _shared_producer(lp) and len(lp.propagate_down) and \
                not all(lp.propagate_down):
            # no backward copies the top's diff down, but a reader's backward writes the shared diff all the same,
            # which the layers upstream back-propagate where their backward runs (a Split below sums it)
            keys.setdefault("shared-blob-memory", set()).update(
                _diff_sharing_upstream(net, lp),
                _upstream_diff_keys(net.layer[:list(net.layer).index(lp)], lp.bottom))
        if lp.type == "Parameter":            # its top's diff is the param's (a solver step's update shows)
            # ... and so is the diff of every blob sharing the top's (a Reshape's, one-bottom Concat's, one-top
            # Slice's top: ShareDiff in their Reshape, which each forward runs after the Parameter's)
            keys.setdefault("shared-blob-memory", set()).update(
                f"blob/diff/{b}" for b in diff_groups.get(lp.top[0], {lp.top[0]}))
            if prog.backward is not None and lp.top[0] not in consumed:
                keys["shared-blob-memory"].add(f"param/diff/{lp.name}/0")
        if lp.type == "HingeLoss":
            # the margins show wherever that diff memory does: the blobs sharing it (a Reshape's, one-bottom
            # Concat's, one-top Slice's ShareDiff) and a Parameter's param, whose diff its top is
            shared = diff_groups.get(lp.bottom[0], {lp.bottom[0]})
            keys.setdefault("hinge-scratch-diff", set()).update(f"blob/diff/{b}" for b in shared)
            keys["hinge-scratch-diff"].update(f"param/diff/{other.name}/0" for other in net.layer
                                              if other.type == "Parameter" and set(other.top[:1]) & shared)
        if lp.type == "Scale" and len(lp.propagate_down) and not lp.propagate_down[0] and lp.top[0] != lp.bottom[0]:
            keys.setdefault("scale-scratch-diff", set()).add(f"blob/diff/{lp.bottom[0]}")
        if lp.name in written_scales:
            # the scale's diff, and every blob sharing its memory (ParamSpec name)
            shared = lp.param[0].name if len(lp.param) else ""
            quirk = keys.setdefault(written_scales[lp.name], set())
            quirk.update(f"param/diff/{other.name}/{j}" for other in net.layer for j, spec in enumerate(other.param)
                         if shared and spec.name == shared)
            quirk.add(f"param/diff/{lp.name}/0")
    if not net.force_backward:
        # a BatchNorm in place on a net input: its backward runs (its params) and, ignoring propagate_down, writes
        # the input's diff, which is its top's: the top's diff divided by the standard deviation
        inputs = set(net.input) | {t for lp in net.layer if not lp.bottom for t in lp.top}
        keys.setdefault("ignores-propagate-down", set()).update(
            f"blob/diff/{lp.bottom[0]}" for lp in net.layer
            if lp.type == "BatchNorm" and lp.top[:1] == lp.bottom[:1] and lp.bottom[0] in inputs)
    return keys


def _diff_sharing_upstream(net: caffe_pb2.NetParameter, lp) -> set[str]:
    """The diff keys of `lp`'s tops and bottoms, and on up through the diff-sharing layers producing its bottoms
    (Reshape, one-bottom Concat, one-top Slice: ShareDiff in their Reshape): one memory in Caffe."""
    keys, todo = set(), [lp]
    while todo:
        layer = todo.pop()
        new = {f"blob/diff/{b}" for b in (*layer.bottom, *layer.top)} - keys
        keys |= new
        todo += [other for other in net.layer if other.type in DIFF_SHARING and _shared_producer(other) and
                 other.type != "Parameter" and f"blob/diff/{other.top[0]}" in new and other is not layer]
    return keys


def _caffe_layers(net: caffe_pb2.NetParameter, prog: Program) -> list:
    """The layers Caffe's Net::Init builds for the program's state: `input:` fields as an Input layer, filtered,
    Split layers inserted (caffe_torch's functions for these, whose layer and blob names the fuzzer compares);
    [] for a net they refuse."""
    def unknown_bottom(file_index, lp, blob):
        raise PrototxtError(blob)

    param = caffe_pb2.NetParameter()
    param.CopyFrom(net)
    src = Source("net")
    state = caffe_pb2.NetState(phase=prog.phase, level=prog.level, stage=prog.stages)
    try:
        upgrade_inputs(param, src)
        return [lp for _, lp in insert_splits(filter_layers(param, state, src), unknown_bottom)]
    except CaffeError:
        return []


def _flatten_diff_keys(net: caffe_pb2.NetParameter, prog: Program) -> tuple[set[str], tuple[str, ...]]:
    """What the quirk flatten-backward-shares-diff explains: observation keys (a param key ending in "/*" stands for
    all the layer's params), and the stages where it explains any value. A Flatten's Backward makes its bottom's
    diff its top's (ShareDiff), so where that bottom blob (the version the Flatten alone reads: no Split) is the
    top of a layer whose Reshape made its diff another's (a one-bottom Concat's, one-top Slice's, Reshape's: its
    bottom's; Parameter's: its param's; RNN's / LSTM's first top: the unrolled net's), that other never gets the
    gradient, nor anything upstream of it, and solver steps differ from there on (and, but for a Parameter's, that
    Reshape shares the diff again at the next forward: the bottom's diff is the other's there); and the layers
    computing in
    place on that bottom back-propagate in the top's diff (it holds their bottom's), which where the top has a loss
    weight (Caffe's seed, written once at set-up) or is an output (its diff left for the next backward) seeds the
    solver's later backwards."""
    layers = _caffe_layers(net, prog) if prog.backward is not None or prog.steps else []
    keys: set[str] = set()
    stages: set[str] = set()
    for i, flat in enumerate(layers):
        if flat.type != "Flatten" or not flat.bottom or not flat.top:
            continue
        b = flat.bottom[0]
        writers = [lp for lp in layers[:i] if b in lp.top]
        in_place = False
        while writers and b in writers[-1].bottom:
            writers.pop()
            in_place = True
        if in_place:
            keys.add(f"blob/diff/{flat.top[0]}")
            # a loss top's diff (Caffe's seed, written once at set-up) or an output's (left by the last backward,
            # read by the solver's next one) seeds the solver's backwards with what the in-place layers wrote
            if any(flat.loss_weight[:1]) or not any(flat.top[0] in lp.bottom for lp in layers[i + 1:]):
                stages.add("step")
        producer = writers[-1] if writers else None
        if producer is None or not (producer.type in DIFF_SHARING and _shared_producer(producer) or
                                    producer.type in ("RNN", "LSTM") and producer.top[0] == b):
            continue
        stages.add("step")
        if producer.type != "Parameter":
            # its Reshape, which every forward runs, shares the diff again: the next forward gives the Flatten's
            # bottom the other's diff back, no longer the gradient the Flatten's Backward gave it
            keys.add(f"blob/diff/{b}")
        upstream = producer.bottom[:1]
        if producer.type in ("RNN", "LSTM"):       # x and the static input (not the markers, nor hidden states)
            hidden = {"RNN": 1, "LSTM": 2}[producer.type] if producer.recurrent_param.expose_hidden else 0
            upstream = producer.bottom[:1] + (producer.bottom[2:3] if len(producer.bottom) > 2 + hidden else [])
        keys.add(f"param/diff/{producer.name}/*")
        keys |= _upstream_diff_keys(layers[:i], upstream)
    return keys, tuple(sorted(stages))


def _upstream_diff_keys(layers: list, blobs) -> set[str]:
    """The diffs a wrong gradient into `blobs` reaches: theirs, and those of every blob and param (a param key
    ending in "/*" stands for all the layer's params) of the `layers` upstream of them."""
    keys: set[str] = set()
    upstream, seen = list(blobs), set()
    while upstream:
        blob = upstream.pop()
        if blob in seen:
            continue
        seen.add(blob)
        keys.add(f"blob/diff/{blob}")
        for lp in layers:
            if blob in lp.top:
                keys.add(f"param/diff/{lp.name}/*")
                upstream.extend(lp.bottom)
    return keys


def _read_tops(lp, shapes: dict[str, tuple] | None = None) -> list[str]:
    """The tops whose data the layer's Backward_cpu reads and a later layer computing in place on them overwrites:
    its tops, or, where it computes in place itself, its bottom's, the same blob (quirk backward-reads-overwritten-top;
    Power: power 2 reads only the bottom, power 1 or a zero power * scale nothing). An exposed hidden state of a
    RNN or LSTM is the unrolled net's blob (ShareData in RecurrentLayer::Forward_cpu) that a TanH (RNN's h_T) or
    the last LSTMUnit (LSTM's c_T, its top C) reads in the unrolled net's backward; so is a RNN's output over one
    time step (`shapes`: the blobs' shapes where known), the one-bottom Concat of o_1 (ShareData in ConcatLayer's
    Reshape), which o_1's TanH reads."""
    pp = lp.power_param
    power_reads = pp.power != 1 and pp.power * pp.scale != 0
    in_place = bool(lp.bottom) and bool(lp.top) and lp.top[0] == lp.bottom[0]
    if lp.type in ("RNN", "LSTM"):
        one_step = lp.type == "RNN" and bool(lp.bottom) and (shapes or {}).get(lp.bottom[0], (0,))[0] == 1
        return lp.top[:1] * one_step + \
            (list(lp.top[{"RNN": 1, "LSTM": 2}[lp.type]:]) if lp.recurrent_param.expose_hidden else [])
    reads = lp.type in ("TanH", "Sigmoid", "Exp", "ELU", "Softmax", "Normalize", "LSTMUnit") or \
        lp.type == "LRN" and lp.lrn_param.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS or \
        lp.type == "Power" and power_reads and (pp.power != 2 or in_place) or \
        lp.type == "MVN" and lp.mvn_param.normalize_variance or \
        lp.type == "Eltwise" and lp.eltwise_param.operation == caffe_pb2.EltwiseParameter.PROD and \
        not lp.eltwise_param.stable_prod_grad or \
        in_place and lp.type in ("ReLU", "AbsVal", "BNLL", "Log")
    return list(lp.top) if reads else []


def _overwritten_top_keys(net: caffe_pb2.NetParameter, prog: Program,
                          theirs: EngineResult | None) -> tuple[set[str], tuple[str, ...]]:
    """What the quirk backward-reads-overwritten-top explains: a layer whose Backward reads its top's data, where a
    later layer computes in place on that top (so the blob holds that layer's output by the backward), gives its
    bottoms, and everything upstream, the gradient at the wrong values: those diffs (keys as _flatten_diff_keys'),
    and every value after a solver step where a layer upstream has params (in Caffe's built net)."""
    layers = _caffe_layers(net, prog) if prog.backward is not None or prog.steps else []
    keys: set[str] = set()
    shapes = blob_shapes(theirs)
    for i, lp in enumerate(layers):
        if any(_later_in_place(layers[i + 1:], t) for t in _read_tops(lp, shapes)):
            keys |= _upstream_diff_keys(layers[:i + 1], lp.bottom) | {f"param/diff/{lp.name}/*"}
    names = {k.split("/")[2] for k in keys if k.startswith("param/")}
    learned = theirs is not None and any(k.split("/")[3] in names for k in theirs.obs
                                         if k.startswith("build/param/data/"))
    return keys, ("step",) if learned else ()


def _hinge_scratch_keys(net: caffe_pb2.NetParameter, prog: Program,
                        theirs: EngineResult | None) -> tuple[set[str], tuple[str, ...]]:
    """What the quirk hinge-scratch-diff explains upstream of a HingeLoss whose Backward leaves its bottom's diff
    holding the forward's margins (no backward: loss weight 0, its top unread, no force_backward (Net::Init's
    layer_contributes_loss); or propagate_down false for it): the backward that reads that diff (a Split's, which sums
    its tops' diffs: split_layer.cpp caffe_add) back-propagates the margins. Keys and stages as
    _overwritten_top_keys'."""
    layers = _caffe_layers(net, prog) if prog.backward is not None or prog.steps else []
    consumed = {b for lp in layers for b in lp.bottom}
    keys: set[str] = set()
    for i, lp in enumerate(layers):
        if lp.type != "HingeLoss" or not lp.bottom:
            continue
        unrun = not net.force_backward and not any(lp.loss_weight[:1] or [1]) and not set(lp.top) & consumed
        if unrun or not all(lp.propagate_down[:1]):
            keys |= _upstream_diff_keys(layers[:i], lp.bottom[:1])
    names = {k.split("/")[2] for k in keys if k.startswith("param/")}
    learned = theirs is not None and any(k.split("/")[3] in names for k in theirs.obs
                                         if k.startswith("build/param/data/"))
    return keys, ("step",) if learned else ()


def _batchnorm_in_place_keys(net: caffe_pb2.NetParameter, prog: Program, theirs: EngineResult | None) -> set[str]:
    """The diff of a blob a BatchNorm computes in place on where no backward reaches it from below (no force_backward,
    no layer upstream with params): this build's BatchNorm runs its backward all the same (its statistics' param specs
    dropped by UpgradeNetBatchNorm: batchnorm-stats-trained) and, ignoring propagate_down, writes its bottom's diff,
    which is the blob's (use_global_stats: the top's diff divided by the standard deviation), where caffe_torch
    leaves the top's diff
    (quirk ignores-propagate-down; the rule of _quirk_keys for a net input, generalised)."""
    if net.force_backward or theirs is None:
        return set()
    layers = _caffe_layers(net, prog) if prog.backward is not None or prog.steps else []
    learned = {k.split("/")[3] for k in theirs.obs if k.startswith("build/param/data/")}
    keys: set[str] = set()
    for i, lp in enumerate(layers):
        if lp.type != "BatchNorm" or not lp.bottom or lp.top[:1] != lp.bottom[:1]:
            continue
        upstream = _upstream_diff_keys(layers[:i], lp.bottom[:1])
        if not any(k.split("/")[2] in learned for k in upstream if k.startswith("param/")):
            keys.add(f"blob/diff/{lp.bottom[0]}")
    return keys


def _later_in_place(later: list, blob: str) -> bool:
    """Whether a layer of `later` computes in place on `blob` before another layer produces it anew."""
    for lp in later:
        if any(j < len(lp.bottom) and lp.bottom[j] == t == blob for j, t in enumerate(lp.top)):
            return True
        if blob in lp.top:
            return False
    return False


def _diff_groups(layers: list) -> dict[str, set[str]]:
    """{blob: the blobs sharing its diff memory} in Caffe's built net: a one-bottom Concat's, one-top Slice's or
    Reshape's tops share their bottom's diff (ShareDiff in their Reshape; quirk shared-blob-memory)."""
    groups: dict[str, set[str]] = {}
    for lp in layers:
        if lp.type in DIFF_SHARING and lp.type != "Parameter" and _shared_producer(lp) and lp.bottom:
            group = set().union(*(groups.get(b, {b}) for b in (lp.bottom[0], *lp.top)))
            groups.update(dict.fromkeys(group, group))
    return groups


def _shared_diff_in_place_keys(layers: list) -> set[str]:
    """Diffs of blobs sharing diff memory with a blob that a layer computes in place: that layer's backward writes
    its bottom's diff into the memory all of them show, so they show the gradient of the blob's first version, not
    their own (quirk shared-blob-memory: a Reshape of a BatchNorm computed in place shows the BatchNorm's bottom
    diff). The in-place blob's own diff is that gradient in caffe_torch too."""
    groups = _diff_groups(layers)
    in_place = {b for lp in layers for j, b in enumerate(lp.bottom) if j < len(lp.top) and lp.top[j] == b}
    return {f"blob/diff/{b}" for blob in in_place & set(groups) for b in groups[blob] - in_place}


def _unneeded_bottom_keys(net: caffe_pb2.NetParameter, layers: list) -> dict[str, set[str]]:
    """Bottom diffs that Caffe writes where its Net::Init decided the bottom needs none (a data or input blob
    below a layer whose params make it run backward): a BatchNorm's (any bottom; quirk ignores-propagate-down),
    a RNN's or LSTM's input x and static input (recurrent_layer.cpp back-propagates the unrolled net to them
    unconditionally, lstm_layer.cpp's `propagate_down: true`; same quirk), a Scale's bottom 0 (its scratch;
    scale-scratch-diff) and the blobs sharing its diff (`layers`: Caffe's built net, see _diff_groups). Only a
    divergence where caffe_torch's diff is all zero is explained by these."""
    keys: dict[str, set[str]] = {}
    if net.force_backward:          # every such bottom needs backward: caffe_torch gives it its diff too
        return keys
    groups = _diff_groups(layers)
    for lp in net.layer:
        if lp.type == "BatchNorm":
            keys.setdefault("ignores-propagate-down", set()).update(f"blob/diff/{b}" for b in lp.bottom)
        if lp.type in ("RNN", "LSTM"):
            hidden = {"RNN": 1, "LSTM": 2}[lp.type] if lp.recurrent_param.expose_hidden else 0
            xs = lp.bottom[:1] + (lp.bottom[2:3] if len(lp.bottom) > 2 + hidden else [])
            keys.setdefault("ignores-propagate-down", set()).update(f"blob/diff/{b}" for b in xs)
        if lp.type == "Scale" and lp.top[0] != lp.bottom[0]:
            # the scratch shows in every blob sharing that diff (a one-bottom Concat's bottom: ShareDiff)
            keys.setdefault("scale-scratch-diff", set()).update(
                f"blob/diff/{b}" for b in groups.get(lp.bottom[0], {lp.bottom[0]}))
    return keys


def _connected(layers: list, start) -> tuple[set[str], set[str]]:
    """The blobs and layer names connected to layer `start` through blobs and shared params (ParamSpec name): what a
    changed value of its param reaches in the following forwards, backwards and updates."""
    names, blobs, params = {start.name}, set(start.top) | set(start.bottom), {s.name for s in start.param if s.name}
    grown = True
    while grown:
        grown = False
        for lp in layers:
            shared = {s.name for s in lp.param if s.name}
            if lp.name not in names and (blobs & {*lp.bottom, *lp.top} or params & shared):
                names.add(lp.name)
                blobs |= {*lp.bottom, *lp.top}
                params |= shared
                grown = True
    return blobs, names


def _parameter_top_keys(net: caffe_pb2.NetParameter, prog: Program,
                        solver: caffe_pb2.SolverParameter) -> list[tuple[str, set[str]]]:
    """(stage prefix, observation keys) that the quirk parameter-top-diff explains: a Parameter layer's top diff is
    its param's in Caffe, so a loss weight on that top (no reader: InsertSplits moves a read top's weight to its
    Split) never reaches the param, and a reader's backward writes the param's diff instead of adding to it (iter_size
    > 1; the script's second backward). Once the param's value differs, a step spreads it to everything connected
    (to everything where clip_gradients scales all updates by the norm of all param diffs)."""
    layers = _caffe_layers(net, prog) if prog.backward is not None or prog.steps else []
    found = []
    for lp in layers:
        if lp.type != "Parameter" or not lp.top:
            continue
        read = any(lp.top[0] in other.bottom for other in layers)
        if (not read and any(lp.loss_weight[:1])) or (read and solver.iter_size > 1):
            blobs, names = _connected(layers, lp)
            if solver.clip_gradients > 0:       # the norm of all param diffs scales every update
                blobs = {t for other in layers for t in (*other.bottom, *other.top)}
                names = {other.name for other in layers}
            found.append(("step", {f"blob/{f}/{b}" for b in blobs for f in ("data", "diff")} |
                          {f"param/{f}/{n}/*" for n in names for f in ("data", "diff")}))
        if read and prog.second_round and prog.backward is not None:
            found.append(("bwd1", {f"param/diff/{lp.name}/*", f"blob/diff/{lp.top[0]}"}))
    return found


def _key_quirk(quirk_keys: dict[str, set[str]], d: Divergence) -> str:
    # an array the script kept shows what its blob's or param's does: "kept/blob/diff/x/0" is "blob/diff/x",
    # "kept/param/data/L/1" is "param/data/L/1"
    key = d.key.removeprefix("kept/")
    if d.key.startswith("kept/blob/"):
        key = key.rsplit("/", 1)[0]
    if key.startswith("test/"):
        # the solver's test net (the same prototxt; its params share the train net's data) runs forwards only
        key = key.removeprefix("test/")
        quirk_keys = {cls: keys for cls, keys in quirk_keys.items() if cls in TEST_NET_QUIRKS}
        if key in quirk_keys.get("shared-blob-memory-test", ()):
            return "shared-blob-memory"
    for cls, keys in quirk_keys.items():
        if cls == "shared-blob-memory-test":
            continue
        if key in keys or key.rsplit("/", 1)[0] + "/*" in keys or \
                any(key.startswith(k + "_") and SPLIT_NAME.search(key) for k in keys):
            return cls
    return ""


def classify(prog: Program, divs: list[Divergence], theirs: EngineResult | None = None) -> list[Divergence]:
    """Give each divergence its class (in place; returns `divs`). `theirs`: Caffe's result, for the blobs' shapes."""
    net = prog.net_param()
    shapes = blob_shapes(theirs)
    quirks = _quirk_nets(net, prog, shapes)
    written_scales = _written_scale_diffs(net, shapes)
    quirk_keys = _quirk_keys(net, prog, written_scales)
    layers = _caffe_layers(net, prog) if prog.backward is not None or prog.steps else []
    unneeded_keys = _unneeded_bottom_keys(net, layers)
    quirk_keys.setdefault("shared-blob-memory", set()).update(_shared_diff_in_place_keys(layers))
    quirk_keys.setdefault("ignores-propagate-down", set()).update(_batchnorm_in_place_keys(net, prog, theirs))
    flatten_keys, flatten_stages = _flatten_diff_keys(net, prog)
    quirk_keys["flatten-backward-shares-diff"] = flatten_keys
    overwritten_keys, overwritten_stages = _overwritten_top_keys(net, prog, theirs)
    quirk_keys["backward-reads-overwritten-top"] = overwritten_keys
    hinge_keys, hinge_stages = _hinge_scratch_keys(net, prog, theirs)
    quirk_keys.setdefault("hinge-scratch-diff", set()).update(hinge_keys)
    stale = stale_view_blobs(net)
    stale_kept = any(what == "blob" and name in stale for what, name, _, _ in prog.keep)
    solver = caffe_pb2.SolverParameter()
    if prog.solver_text:
        text_format.Parse(prog.solver_text, solver)
    types = {lp.type for lp in net.layer}
    # a ReLU (negative_slope 0) whose top Caffe makes NaN where caffe_torch's is 0 (an input of -inf): the NaNs
    # then go wherever that top goes (quirk relu-minus-inf)
    relu_keys = {f"{k}/{lp.top[0]}" for lp in net.layer if lp.type == "ReLU" and lp.top and
                 not lp.relu_param.negative_slope for k in ("blob/data", "forward")}
    relu_nan = any(d.nan_over_zero and d.key in relu_keys for d in divs)
    # an Exp or Log scaling its input by 0 (BLAS ?scal), whose top Caffe makes finite where caffe_torch's is NaN (a
    # NaN or infinite input): Caffe's finite values then go wherever that top goes (quirk blas-scal-zero)
    scal_keys = {f"{k}/{lp.top[0]}" for lp in net.layer if lp.top and _scales_by_zero(lp)
                 for k in ("blob/data", "forward")}
    scal_nan = any(d.ours_nan_only and d.key.removeprefix("test/") in scal_keys for d in divs)
    # ... and a solver update scaling by 0: momentum 0 (SGD's and Nesterov's caffe_cpu_axpby(..., momentum, history)
    # never reads an infinite or NaN history), gradient clipping (scale_diff by clip / norm: 0 for an infinite norm)
    scal_steps = bool(prog.solver_text) and (solver.type in ("SGD", "Nesterov") and not solver.momentum or
                                            solver.HasField("clip_gradients") and solver.clip_gradients >= 0)
    parameter_keys = _parameter_top_keys(net, prog, solver)
    for d in divs:
        if d.what == "refusal" and "new_queue_pairs_" in d.detail:
            d.cls = "data-layer-two-nets"
        elif d.what == "refusal" and "(type Scale): bottom[1] shape" in d.detail and \
                "does not match bottom[0]" in d.detail and "; Caffe completes" in d.detail:
            d.cls = "scale-shape-unchecked"
        elif d.what == "refusal" and "; Caffe completes" in d.detail and "caffe_torch raises" in d.detail and \
                re.search(r"\(type (Convolution|Deconvolution|Pooling)\): output size .* is not positive", d.detail):
            d.cls = "empty-output"
        elif d.what == "refusal" and "; Caffe completes" in d.detail and d.stage != "build" and \
                re.search(r"\(type ArgMax\): top_k \d+ exceeds|\(type (RNN|LSTM)\): bottom x_static must be", d.detail):
            d.cls = "set-up-only-check"
        elif d.what == "refusal" and prog.expect_field == "iter_size" and "caffe_torch raises" in d.detail:
            d.cls = "iter-size-zero"
        elif d.what == "refusal" and prog.expect_field == "dropout_ratio" and "caffe_torch raises" in d.detail and \
                "dropout_ratio must be in [0, 1)" in d.detail and "; Caffe completes" in d.detail:
            d.cls = "dropout-ratio-unchecked"
        elif "in place but changes its shape" in d.detail and (
                d.what == "refusal" and "; Caffe completes" in d.detail or
                d.what == "refusal-message" and _refused_before_mutation(prog, d.detail)):
            d.cls = "in-place-reshape"
        elif d.what == "refusal" and "SigmoidCrossEntropyLoss" in types and "; Caffe aborts" in d.detail and \
                "caffe_torch completes" in d.detail and "Cannot use legacy accessors" in d.detail:
            d.cls = "sigmoid-ce-legacy-num"
        elif d.what == "refusal" and d.refused_earlier or \
                d.what == "refusal-message" and _refused_before_mutation(prog, d.detail):
            d.cls = "refused-earlier"
        elif quirks and (d.what == "value" or d.what == "refusal" and HEAP_CRASH.search(d.detail)):
            d.cls = sorted(quirks)[0]
        elif d.what == "value" and (cls := _key_quirk(quirk_keys, d) or
                                    d.ours_zero and _key_quirk(unneeded_keys, d)):
            d.cls = cls
        elif d.what == "value" and any(d.stage.startswith(stage) and _key_quirk({"parameter-top-diff": keys}, d)
                                       for stage, keys in parameter_keys):
            d.cls = "parameter-top-diff"
        elif d.what == "value" and relu_nan and d.nan_only:
            d.cls = "relu-minus-inf"
        elif d.what == "value" and d.ours_nan_only and (scal_nan or scal_steps and d.stage.startswith("step")):
            d.cls = "blas-scal-zero"
        elif d.what == "value" and d.stage.startswith(flatten_stages):
            d.cls = "flatten-backward-shares-diff"
        elif d.what == "value" and d.stage.startswith(overwritten_stages):
            d.cls = "backward-reads-overwritten-top"
        elif d.what == "value" and d.stage.startswith(hinge_stages):
            d.cls = "hinge-scratch-diff"
        elif stale_kept and (d.key.startswith("kept/") or d.what == "refusal"):
            d.cls = "stale-view"
        elif d.stage.startswith("step") and d.what == "value" and "BatchNorm" in types and solver.weight_decay:
            d.cls = "batchnorm-stats-trained"
        elif d.stage.startswith("step") and d.what == "value" and solver.iter_size > 1 and written_scales:
            d.cls = min(written_scales.values())      # the step's update misses all but the last pass's scale diff
    return divs


def _scales_by_zero(lp) -> bool:
    """An Exp whose inner scale ln(base) * scale is 0 (scale 0, or base 1), or a Log with scale 0: Caffe scales the
    input by it with caffe_cpu_scale / caffe_scal (BLAS ?scal: exp_layer.cpp, log_layer.cpp), which this build's
    OpenBLAS turns into zeros whatever the input (quirk blas-scal-zero)."""
    if lp.type == "Exp":
        ep = lp.exp_param
        return ep.scale == 0 or ep.base == 1
    return lp.type == "Log" and lp.log_param.scale == 0


def _refused_before_mutation(prog: Program, detail: str) -> bool:
    """caffe_torch's refusal names a layer before the one the illegal mutation changed (prog.invalid: "Type 'name'
    ..."), or that layer itself where the mutation is its param count: Caffe's Net::Init sets the layers up in order
    (Layer::SetUp: LayerSetUp, Reshape, SetLossWeights; then AppendParam), so it passes that layer first and aborts
    at the mutated one."""
    mutated = re.match(r"\S+ '([^']+)'", prog.invalid)
    ours = re.search(r"layer '([^']+)'", detail)
    names = _layer_names(prog)
    if not (mutated and ours) or mutated.group(1) not in names or ours.group(1) not in names:
        return False
    # a layer's param count is checked after its SetUp (Net::AppendParam): it passes that layer's own checks first
    before = names.index(ours.group(1)) - (prog.expect_field == "param")
    return before < names.index(mutated.group(1))


def class_reason(cls: str) -> str:
    """What a divergence class stands for."""
    if cls == "refused-earlier":
        return ("caffe_torch's own check refuses the case before the stage where Caffe aborts (in a net with an "
                "illegal field: at a layer Caffe sets up before the one it aborts at)")
    return QUIRKS[cls].reason
