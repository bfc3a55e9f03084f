"""Checks the evaluation scripts run before the long part, shared by test_identification and
test_verification (training has its own in speaker/train.py, with the same voxdata scan and cache):
every recording of the list once (voxdata.scan_audio, cached next to the run), and weights that cover every
layer of the net (Caffe's copy_from leaves absent layers at their fillers without a word)."""

from __future__ import annotations

import os
from pathlib import Path

from voxdata.scan import default_cache_file, scan_audio

from .netinfo import weights_fit


def check_eval_audio(paths, out_dir, name: str, log, skip_bad: bool | None = None, progress: bool = False,
                     min_samples: int = 1) -> list[str]:
    """The usable recordings among `paths` (input order): readable, and at least `min_samples` long (one crop
    when crops may not repeat a recording: --no-augment). Unusable ones are listed in
    <out_dir>/bad_audio_<name>.txt; they are an error (ValueError naming the count, the first and the list)
    unless skip_bad, when they are left out with a warning. skip_bad None: the script has no --skip-bad-audio
    (test_verification.py: a trial needs both of its recordings), so the error does not advise it."""
    result = scan_audio(paths, cache_file=default_cache_file(out_dir), workers=2 * (os.cpu_count() or 1),
                        progress=progress, min_samples=min_samples)
    if result.bad:
        listing = Path(out_dir) / f"bad_audio_{name}.txt"
        listing.write_text("\n".join(result.bad) + "\n")
        what = (f"{len(result.bad)} of {len(set(map(os.fspath, paths)))} recordings are unusable (first: "
                f"{result.bad[0]}; all listed in {listing})")
        if skip_bad is None:
            raise ValueError(f"{what}: fix or replace them (a trial or cohort entry needs its recording)")
        if not skip_bad:
            raise ValueError(f"{what}: fix or remove them, or pass --skip-bad-audio to leave them out")
        log.warning("--skip-bad-audio: %s; left out", what)
    return result.good


def load_test_net(caffe, net_path: str, weights: str, phase=None):
    """caffe.Net(net_path, weights, TEST), after checking that `weights` exists and holds every layer of the
    net that has parameters, each of the net's shape (FileNotFoundError / ValueError naming the file and the
    layers; an unreadable file is caffe_torch's WeightsError)."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights {weights}: no such file")
    net = caffe.Net(net_path, caffe.TEST if phase is None else phase)
    missing, misfits = weights_fit(net, weights)
    if missing:
        raise ValueError(f"{weights}: holds no weights for {len(missing)} layer(s) of {net_path} "
                         f"({', '.join(missing)}); they would keep their random fillers: wrong or truncated "
                         "file?")
    if misfits:
        raise ValueError(f"{weights}: does not fit {net_path} ({'; '.join(misfits)}): the weights of another net?")
    net.copy_from(weights)
    return net
