"""The rest of pycaffe's Net surface, as a mixin of `caffe_torch.Net` (which provides construction, forward,
the blobs and the autograd backward of the training loop).

pycaffe names: `_blob_names`, `_blobs`, `_inputs`, `_outputs` (blob indices), `_bottom_ids(i)`,
`_top_ids(i)`, `blob_loss_weights`, `layers` / `layer_dict` (with `setup` / `reshape`), `_forward`,
`_backward`, `backward` (with `start=` / `end=`), `forward_all`, `forward_backward_all`,
`set_input_arrays` (MemoryData), `save_hdf5`, `load_hdf5`.

Backward has Caffe's meaning: every layer's Backward runs from the current top diffs, so a diff the user
writes into an output blob (`net.blobs['prob'].diff[...] = g`) is what flows back, loss tops flow back their
loss weight, and a layer with learnable blobs gets its param diffs even when no loss depends on it. Two ways:
- The whole net after a forward that recorded a graph: one autograd pass from the net's outputs seeded with
  those diffs (what Caffe's layer-by-layer pass computes, with the forward's own dropout masks).
- A range (`start=` / `end=`), or a net with no recorded forward: layer by layer in reverse, each layer run
  again on detached copies of its bottoms (for a bottom computed in place since, what the last forward gave
  the layer: recorded, or in a TEST net's unrecorded forward rebuilt from the blob's first version; else the
  blob's current data) so that gradients stop at the range's bottoms, as Caffe's do. A stochastic layer
  (Dropout) draws a new mask there, and a layer that updates state in forward (BatchNorm's running
  averages in TRAIN) updates it again: use the whole-net backward for those.
"""

from collections import OrderedDict
from functools import partial

import numpy as np
import torch

from .layers.base import rerunning


class PycaffeLayerView:
    """pycaffe's `net.layers[i]`: `.type`, `.blobs` (the layer's learnable blobs as Blob), `.setup(bottom, top)`
    and `.reshape(bottom, top)` with lists of the net's Blobs (reshape sets the tops' shapes from the bottoms')."""

    def __init__(self, module, blobs: list):
        self.module = module
        self.type = module.type_name
        self.blobs = blobs

    def reshape(self, bottom, top) -> None:
        shapes = self.module.top_shapes([tuple(b.shape) for b in bottom])
        for blob, shape in zip(top, shapes):
            blob.reshape(*shape)

    def setup(self, bottom, top) -> None:
        # caffe_torch builds a layer (its LayerSetUp) when the net is built; what remains is the Reshape
        self.reshape(bottom, top)

    def __repr__(self) -> str:
        return f"<Layer {self.module.name!r} type={self.type}>"


class PycaffeNetMixin:
    # ------------------------------------------------------------------ set-up (called by Net.__init__)
    def _init_pycaffe(self, record_layer_inputs: bool) -> None:
        """Record each layer's bottoms while a forward records a graph (for a ranged backward on in-place
        blobs), unless the net is built without (`record_layer_inputs=False`: a training loop's, which then
        pays nothing per layer); the training loop's `backward_loss` drops them, so they live only from a
        forward to its backward, as the graph itself does."""
        self._layer_inputs: dict[int, tuple[torch.Tensor, ...]] = {}
        self._records_layer_inputs = record_layer_inputs
        # the last forward's graph was used by a backward (autograd frees it): a second backward goes layer
        # by layer, as Caffe allows any number of backward passes
        self._graph_used = False
        if record_layer_inputs:
            for i, module in enumerate(self._layers):
                module.register_forward_hook(partial(self._record_layer_inputs, i))

    def _record_layer_inputs(self, index: int, module, args, output) -> None:
        if torch.compiler.is_compiling():
            # inside caffe_torch.fast's compiled forward: no side effects in the graph (a pycaffe backward of
            # such a net then goes layer by layer)
            return
        self._graph_used = False
        if torch.is_grad_enabled() and self.enable_backward:
            self._layer_inputs[index] = tuple(a.detach() for a in args)
        else:
            self._layer_inputs.pop(index, None)

    # ------------------------------------------------------------------ names and indices
    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def _blobs(self) -> list:
        return list(self.blobs.values())

    def _blob_index(self, name: str) -> int:
        return self._blob_names.index(name)

    @property
    def _inputs(self) -> list[int]:
        return [self._blob_index(n) for n in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        return [self._blob_index(n) for n in self.outputs]

    def _bottom_ids(self, layer_index: int) -> list[int]:
        return [self._blob_index(n) for n in self.bottom_names[self._layer_names[layer_index]]]

    def _top_ids(self, layer_index: int) -> list[int]:
        return [self._blob_index(n) for n in self.top_names[self._layer_names[layer_index]]]

    @property
    def _blob_loss_weights(self) -> list[float]:
        return list(self.blob_loss_weights.values())

    @property
    def blob_loss_weights(self) -> dict[str, float]:
        """{blob: its loss weight} for every blob (0 for blobs that are not a loss)."""
        return OrderedDict((n, float(self._loss_weights.get(n, 0.0))) for n in self.blobs)

    @property
    def layers(self) -> list:
        """The layers as pycaffe shows them; a Python layer is the user's own object, as in pycaffe."""
        views = []
        for module, name in zip(self._layers, self._layer_names):
            user = getattr(module, "user", None) if module.type_name == "Python" else None
            views.append(user if user is not None else PycaffeLayerView(module, self.params.get(name, [])))
        return views

    @property
    def layer_dict(self) -> dict:
        return OrderedDict(zip(self._layer_names, self.layers))

    # ------------------------------------------------------------------ forward / backward
    def _forward(self, start: int, end: int) -> float:
        """Run layers start..end (indices, inclusive); return the loss (pycaffe's Net._forward)."""
        self.forward_range(start, end, retain_blob_diffs=True)
        return self.loss_value()

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict[str, np.ndarray]:
        """pycaffe's Net.backward: copy `kwargs` (one diff per net output) into the outputs' diffs, run
        backward from layer `start` down to layer `end` (names; default all), return {blob: diff} of the
        inputs (or of `end`'s bottoms) and of `diffs`."""
        start_i = self._index(start, "backward(start=)") if start is not None else len(self._layers) - 1
        if end is not None:
            end_i = self._index(end, "backward(end=)")
            names = list(self.bottom_names[end]) + list(diffs or [])
        else:
            end_i = 0
            names = list(self.inputs) + list(diffs or [])
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise ValueError(f"top diff arguments {sorted(kwargs)} do not match net outputs {self.outputs}")
            for top, diff in kwargs.items():
                diff = np.asarray(diff)
                if diff.shape[:1] != self.blobs[top].shape[:1]:
                    raise ValueError(f"diff for '{top}' is not batch sized: {diff.shape} vs blob "
                                     f"{self.blobs[top].shape}")
                self.blobs[top].diff[...] = diff
        self._backward(start_i, end_i)
        return {n: self.blobs[n].diff for n in dict.fromkeys(names)}

    def _backward(self, start: int, end: int) -> None:
        """Caffe's BackwardFromTo(start, end): layers start down to end (indices, start >= end)."""
        # host copies handed out (a GPU net's .data/.diff) reach the tensors first, and stale ones are dropped
        self._sync.flush()
        whole = start == len(self._layers) - 1 and end == 0
        if whole and self._recorded_graph():
            # every output whose layer Caffe's Net::Backward runs passes its diff on, a loss top its loss weight
            # unless the script wrote another (backward_loss reads them)
            records = dict(self._layer_inputs)       # kept for a second (layer by layer) backward
            self.backward_loss(retain_blob_diffs=True)
            self._layer_inputs.update(records)
            self._graph_used = True
        else:
            self._backward_layerwise(start, end)

    def _recorded_graph(self) -> bool:
        """Whether the last forward recorded a graph from which every output's gradient can be taken."""
        if not self.enable_backward or self._graph_used:
            return False
        graph = self._graph_tensors
        return any(n in graph and graph[n].requires_grad for n in self.outputs)

    def _diff_tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.blobs[name].diff, dtype=like.dtype, device=like.device).reshape(like.shape)

    def _backward_layerwise(self, start: int, end: int) -> None:
        if not self._records_layer_inputs:
            raise ValueError(f"net '{self.name}' was built without the per-layer records a layer-by-layer "
                             "backward needs (record_layer_inputs=False: a training solver's net, "
                             "Solver(blob_diffs=False)); build it with them for net.backward(start=/end=)")
        self.refuse_backward(start, end)
        grads: dict[str, torch.Tensor] = {}        # diffs produced in this pass, by blob
        layer_needs, bottom_needs = self._backward_plan.layer_needs, self._backward_plan.bottom_needs
        # names written by layer i or a later one: such a bottom of layer i no longer holds what layer i read
        # (an in-place chain), so its recorded input is used; any other bottom is read from its blob now, as
        # Caffe does (a value the user wrote there counts)
        written_from = [set() for _ in self._layers]
        later: set[str] = set()
        for i in range(len(self._layers) - 1, -1, -1):
            later = later | set(self.top_names[self._layer_names[i]])
            written_from[i] = later
        for i in range(start, end - 1, -1):
            module = self._layers[i]
            lname = self._layer_names[i]
            # Caffe's BackwardFromTo skips it; a layer without tops (HDF5Output, Silence) passes no diff back, and
            # running its forward again would repeat its side effect (HDF5Output writes its batch once); nor does
            # one without bottoms or learning params (a Data layer under force_backward, whose forward again would
            # read the next batch: Caffe's Backward_cpu does nothing)
            if module.is_source or not layer_needs[i] or not self.top_names[lname] or \
                    not self.bottom_names[lname] and not any(self._param_propagate[i]):
                continue
            bottom_names, top_names = self.bottom_names[lname], self.top_names[lname]
            recorded = self._layer_inputs.get(i)
            if recorded is not None and len(recorded) != len(bottom_names):
                recorded = None
            sources = [self.blobs[b].tensor if b not in written_from[i] else recorded[j] if recorded is not None
                       else self._unrecorded_input(i, b) for j, b in enumerate(bottom_names)]
            needed = bottom_needs[i]
            bottoms = [s.detach().clone().requires_grad_(need and s.is_floating_point())
                       for s, need in zip(sources, needed)]
            params = [p for p, flag in zip(module.blobs, self._param_propagate[i]) if flag and p.requires_grad]
            with torch.enable_grad():
                outs = self._rerun_layer(i, bottoms)
            roots, seeds = [], []
            for name, t in zip(top_names, outs):
                seed = grads[name] if name in grads else self._diff_tensor(name, t)
                self.blobs[name].diff[...] = seed.detach().cpu().numpy()
                if t.requires_grad:
                    roots.append(t)
                    seeds.append(seed)
            wanted = [b for b in bottoms if b.requires_grad] + params
            if not roots or not wanted:
                continue
            got = torch.autograd.grad(roots, wanted, seeds, allow_unused=True)
            bottom_grads = dict(zip([id(b) for b in bottoms if b.requires_grad], got))
            with torch.no_grad():
                for p, g in zip(params, got[len(got) - len(params):]):
                    if g is None:
                        continue
                    if p.grad is None:
                        p.grad = g.clone()
                    else:               # in place: a kept .diff view of the param follows (caffe_torch/blob.py)
                        p.grad.add_(g)
            for name, b in zip(bottom_names, bottoms):
                g = bottom_grads.get(id(b))
                if g is None:
                    continue
                if name in top_names or name not in grads:      # in place: the bottom's diff replaces the top's
                    grads[name] = g
                else:                                           # read by several layers: Caffe's Split sums
                    grads[name] = grads[name] + g
        for name, g in grads.items():
            self.blobs[name].diff[...] = g.detach().cpu().numpy()
        self._sync.flush()
        self._sync.refresh("diff")          # kept param diff views show the new diffs (caffe_torch/blob.py)

    def _rerun_layer(self, i: int, bottoms: list) -> tuple:
        """Layer i's forward run again for its result (or graph) only: what it moves besides (BatchNorm's statistics
        in TRAIN, a layer's counter) is put back, as Caffe's Backward leaves them."""
        module = self._layers[i]
        kept = [(p, p._version, p.detach().clone()) for p in module.blobs if not p.requires_grad]
        state = module.get_state()
        with rerunning([module]):
            out = (module(*bottoms) if i not in self._detached_params
                   else self._call_detached(module, self._detached_params[i], bottoms))
        with torch.no_grad():
            for p, version, value in kept:
                # only a blob the forward moved: a copy into any other would bump the version at which the new
                # graph saved it (a fixed, lr_mult 0, conv weight) and autograd would then refuse its backward
                if p._version != version:
                    p.copy_(value)
        if state is not None:
            module.set_state(state)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)

    def _unrecorded_input(self, i: int, name: str) -> torch.Tensor:
        """What blob `name` held when layer i read it in the last forward, a layer at or after i having computed it
        in place since, for a forward that kept no records (a TEST net's: evaluation pays nothing for a backward
        that may never come): its first version in that forward (net.py's _first_version, kept anyway) put through
        the layers in place on it before i again (Caffe's in-place PReLU and Scale keep their input for backward
        themselves: bottom_memory_, temp_). The blob's data now where that forward did not run layer i, or an
        in-place layer before i reads another bottom too."""
        current = self.blobs[name].tensor
        if self._last_forward is None or name not in self._first_version:
            return current
        start, end = self._last_forward[:2]
        if not start <= i <= end:
            return current
        value = self._first_version[name]
        for k in range(start, i):
            lname = self._layer_names[k]
            if name in self.top_names[lname] and name in self.bottom_names[lname]:
                if len(self.bottom_names[lname]) != 1:
                    return current
                with torch.no_grad():
                    value = self._rerun_layer(k, [value])[self.top_names[lname].index(name)]
        return value

    def set_input_arrays(self, data, labels) -> None:
        """pycaffe's Net.set_input_arrays: hand (N, C, H, W) data and N labels to the net's first layer, which
        must be a MemoryData layer (implemented with the data layers, caffe_torch/layers/data.py)."""
        from .layers.data import set_input_arrays

        set_input_arrays(self, data, labels)

    _set_input_arrays = set_input_arrays

    def _batches(self, arrays: dict[str, np.ndarray]):
        """Split {blob: array} into batch-sized chunks of the net's batch size, the last one zero-padded."""
        if not arrays:
            return
        batch = self.blobs[next(iter(self.blobs)) if not self.inputs else self.inputs[0]].shape[0]
        total = len(next(iter(arrays.values())))
        for lo in range(0, total, batch):
            chunk = {}
            for name, a in arrays.items():
                part = np.asarray(a[lo:lo + batch])
                if len(part) < batch:
                    pad = np.zeros((batch - len(part),) + part.shape[1:], dtype=part.dtype)
                    part = np.concatenate([part, pad])
                chunk[name] = part
            yield chunk

    def forward_all(self, blobs=None, **kwargs) -> dict[str, np.ndarray]:
        """Forward a whole data set given as {input: array} in batches; {output: array} with the padding of
        the last batch removed (pycaffe's Net.forward_all)."""
        outs: dict[str, list] = {name: [] for name in dict.fromkeys(list(self.outputs) + list(blobs or []))}
        for batch in self._batches(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        result = {name: np.asarray(v) for name, v in outs.items()}
        if kwargs:
            pad = len(next(iter(result.values()))) - len(next(iter(kwargs.values())))
            if pad:
                result = {name: v[:-pad] for name, v in result.items()}
        return result

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """Forward and backward a whole data set: `kwargs` holds the inputs and the output diffs; returns
        ({output: array}, {input: diff}) without the padding (pycaffe's Net.forward_backward_all)."""
        forward_in = {k: v for k, v in kwargs.items() if k in self.inputs}
        backward_in = {k: v for k, v in kwargs.items() if k in self.outputs}
        unknown = set(kwargs) - set(forward_in) - set(backward_in)
        if unknown:
            raise ValueError(f"forward_backward_all: {sorted(unknown)} are neither inputs {self.inputs} nor "
                             f"outputs {self.outputs}")
        outs = {name: [] for name in dict.fromkeys(list(self.outputs) + list(blobs or []))}
        grads = {name: [] for name in dict.fromkeys(list(self.inputs) + list(diffs or []))}
        fwd = self._batches(forward_in) if forward_in else iter(lambda: {}, None)
        bwd = self._batches(backward_in) if backward_in else iter(lambda: {}, None)
        n_batches = -(-len(next(iter(kwargs.values()))) // self.blobs[self.inputs[0]].shape[0]) \
            if kwargs and self.inputs else 1
        for _, fb, bb in zip(range(n_batches), fwd, bwd):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        out_arrays = {k: np.asarray(v) for k, v in outs.items()}
        diff_arrays = {k: np.asarray(v) for k, v in grads.items()}
        if kwargs:
            pad = len(next(iter(out_arrays.values()))) - len(next(iter(kwargs.values())))
            if pad:
                out_arrays = {k: v[:-pad] for k, v in out_arrays.items()}
                diff_arrays = {k: v[:-pad] for k, v in diff_arrays.items()}
        return out_arrays, diff_arrays

    # ------------------------------------------------------------------ HDF5 weights
    def _owned_params(self):
        """(layer name, index, Blob, owns it) for every learnable blob in layer order; a blob shared from an
        earlier layer (ParamSpec name) is not its owner."""
        seen = set()
        for module, name in zip(self._layers, self._layer_names):
            for j, p in enumerate(module.blobs):
                yield name, j, self.params[name][j], id(p) not in seen
                seen.add(id(p))

    def save_hdf5(self, filename) -> None:
        """Caffe's Net::ToHDF5: group data/<layer>/ per layer, dataset "<j>" per learnable blob it owns."""
        import h5py

        self._sync.flush()
        with h5py.File(filename, "w") as f:
            data = f.create_group("data")
            for name in self._layer_names:
                data.create_group(name)
            for layer, j, blob, owner in self._owned_params():
                if owner:
                    data[layer].create_dataset(str(j), data=blob.data)

    def load_hdf5(self, filename) -> None:
        """Caffe's CopyTrainedLayersFromHDF5: same-named layers get the file's blobs; layers the file lacks keep
        theirs, file layers the net lacks are ignored. A shape that differs is an error here (Caffe would
        silently reshape the blob)."""
        import h5py

        self._sync.flush()
        with h5py.File(filename, "r") as f:
            if "data" not in f:
                raise ValueError(f"{filename}: not a Caffe HDF5 weights file (no 'data' group)")
            data = f["data"]
            for layer in self._layer_names:
                if layer in data and len(data[layer]) > len(self.params.get(layer, [])):
                    raise ValueError(f"{filename}: layer '{layer}' has {len(data[layer])} blobs in the file, "
                                     f"the net's has {len(self.params.get(layer, []))}")
            for layer, j, blob, owner in self._owned_params():
                if layer not in data:
                    continue
                if str(j) not in data[layer]:
                    if owner:
                        raise ValueError(f"{filename}: layer '{layer}' has no blob {j} (the net has "
                                         f"{len(self.params[layer])})")
                    continue
                values = np.asarray(data[layer][str(j)])
                if values.shape != blob.shape:
                    raise ValueError(f"{filename}: layer '{layer}' blob {j} has shape {values.shape}, the net "
                                     f"expects {blob.shape}")
                blob.data[...] = values
