"""Caffe's InsertSplits (util/insert_splits.cpp): a Split layer after every top that several layers read.

Caffe builds every net from the filtered NetParameter with these layers added, so they are part of what a
pycaffe script sees: `net.layers`, `net._layer_names`, `net.blobs`, `top_names` / `bottom_names`, the
layers of a saved .caffemodel, and the diffs a ranged backward sums. Names are Caffe's:
    layer  <blob>_<producer layer>_<top index>_split
    tops   <blob>_<producer layer>_<top index>_split_<k>
A top with a nonzero explicit `loss_weight` counts as one more reader: its split's first top carries the loss
weight (the producer's `loss_weight` list is cleared, all of it, as Caffe does) and the readers get tops 1...
"""

from collections import defaultdict

from .proto import caffe_pb2


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(layers: list, unknown_bottom) -> list:
    """`layers`: [(file index, LayerParameter)] as filtered for the net's state; returns the same list with
    the layers' bottoms renamed and the Split layers inserted (each with the file index of the layer whose
    top it splits). `unknown_bottom(file index, layer, bottom)` raises for a bottom no earlier layer made."""
    last_top: dict[str, tuple[int, int]] = {}                 # blob -> (layer, top) that wrote it last
    source: dict[tuple[int, int], tuple[int, int]] = {}       # (layer, bottom) -> (layer, top) it reads
    readers: dict[tuple[int, int], int] = defaultdict(int)    # (layer, top) -> number of readers
    loss_weight: dict[tuple[int, int], float] = {}
    for i, (file_index, lp) in enumerate(layers):
        for j, blob in enumerate(lp.bottom):
            if blob not in last_top:
                unknown_bottom(file_index, lp, blob)
            source[(i, j)] = last_top[blob]
            readers[last_top[blob]] += 1
        for j, blob in enumerate(lp.top):
            last_top[blob] = (i, j)
        # a top used as a loss counts as one more reader
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            top = last_top[lp.top[j]]
            loss_weight[top] = lp.loss_weight[j]
            if loss_weight[top]:
                readers[top] += 1
    out = []
    next_split: dict[tuple[int, int], int] = defaultdict(int)
    for i, (file_index, original) in enumerate(layers):
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(original)
        out.append((file_index, lp))
        for j, blob in enumerate(lp.bottom):
            top = source[(i, j)]
            if readers[top] > 1:
                lp.bottom[j] = split_blob_name(layers[top[0]][1].name, blob, top[1], next_split[top])
                next_split[top] += 1
        for j, blob in enumerate(lp.top):
            n = readers[(i, j)]
            if n <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = caffe_pb2.LayerParameter(name=split_layer_name(lp.name, blob, j), type="Split",
                                             bottom=[blob])
            for k in range(n):
                split.top.append(split_blob_name(lp.name, blob, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            out.append((file_index, split))
            if weight:
                lp.ClearField("loss_weight")
                next_split[(i, j)] += 1
    return out
