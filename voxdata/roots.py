"""Training lists from one or several data roots: VoxCeleb1 (through its iden_split.txt), VoxCeleb2 dev (by
scanning its folders), or a list file in voxceleb_trainer's `train_list.txt` format.

A data root is read through an iden_split.txt when it has one (voxdata.lists, splits 1 + 3 train, 2 validation
in verification mode); otherwise its audio folder is scanned: the first of `dev/aac`, `aac`, `dev/wav`, `wav`
that exists (VoxCeleb2 dev unpacks to `dev/aac/idNNNNN/<video>/NNNNN.m4a`), else the root itself when it holds
speaker folders. Scanning walks `<speaker>/<video>/<file>` (.m4a or .wav) in sorted order; VoxCeleb1's
verification test speakers (vox1_meta.csv in the root, else id10270..id10309) are left out, so that a
VoxCeleb1 folder holding all 1,251 speakers contributes its 1,211 training speakers.

A list file (`--train-list`) has lines `<speaker> <path>`: the path absolute, or relative to a root's audio
folder (the first root that has the file); a `.wav` path that is missing where the `.m4a` of the same name
exists reads the `.m4a` (voxceleb_trainer's lists name the wavs its converter writes).

Labels are dense 0..K-1 over the sorted speaker keys of all roots together, so they depend neither on the
order of the roots nor on the order of the files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .lists import (
    AUDIO_EXTENSIONS,
    ListFormatError,
    Splits,
    UttSet,
    _default_test_speaker,
    _report_missing,
    read_iden_split,
    read_meta,
)

log = logging.getLogger(__name__)

SCAN_FOLDERS = ("dev/aac", "aac", "dev/wav", "wav")


@dataclass
class Source:
    """What one root (or the list file) contributes: (speaker, absolute path) pairs."""

    name: str
    train: list[tuple[str, str]]
    val: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def scan_folder(root) -> str:
    """The audio folder of a data root that holds no iden_split.txt (see the module docstring)."""
    root = os.fspath(root)
    for sub in SCAN_FOLDERS:
        cand = os.path.join(root, sub)
        if os.path.isdir(cand):
            return cand
    return root


def _sorted_dirs(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if e.is_dir()), key=lambda e: e.name)


def scan_utterances(folder, progress: bool = False) -> list[tuple[str, str]]:
    """Every `<speaker>/<video>/<file>.{m4a,wav}` under `folder`, sorted: [(speaker, absolute path)]."""
    from tqdm import tqdm

    folder = os.path.abspath(os.fspath(folder))
    out = []
    for spk in tqdm(_sorted_dirs(folder), desc=f"scan {folder}", unit="speaker", disable=not progress):
        for video in _sorted_dirs(spk.path):
            with os.scandir(video.path) as it:
                names = sorted(e.name for e in it if e.name.endswith(AUDIO_EXTENSIONS) and e.is_file())
            out.extend((spk.name, os.path.join(video.path, n)) for n in names)
    return out


def _vox1_test_speakers(root: str, keys) -> set[str]:
    meta = os.path.join(root, "vox1_meta.csv")
    if os.path.isfile(meta):
        sets = read_meta(meta)
        return {k for k in keys if sets.get(k) == "test"}
    return {k for k in keys if _default_test_speaker(k, "current")}


def scanned_source(root, mode: str, progress: bool = False) -> Source:
    """A root without a list: its scanned utterances, VoxCeleb1's test speakers left out in verification
    mode (identification needs VoxCeleb1's splits: an error)."""
    root = os.fspath(root)
    folder = scan_folder(root)
    if mode != "verification":
        raise ListFormatError(f"--data-root {root}: no iden_split.txt (VoxCeleb1's identification split: put it "
                              "there or in lists/, or give --iden-split); without one the root's utterances are "
                              "scanned, which trains with --mode verification (VoxCeleb2 dev)")
    pairs = scan_utterances(folder, progress)
    if not pairs:
        raise ListFormatError(f"--data-root {root}: no <speaker>/<video>/<file>.m4a or .wav under {folder}")
    held_out = _vox1_test_speakers(root, {s for s, _ in pairs})
    if held_out:
        log.info("%s: leaving out %d VoxCeleb1 verification test speakers (first: %s)", folder, len(held_out),
                 min(held_out))
        pairs = [(s, p) for s, p in pairs if s not in held_out]
    log.info("%s: scanned %d utterances of %d speakers", folder, len(pairs), len({s for s, _ in pairs}))
    return Source(f"{folder} (scanned)", pairs)


def list_source(split_file, root, mode: str) -> Source:
    """A root read through its iden_split.txt (the splits of voxdata.lists.read_iden_split)."""
    splits = read_iden_split(split_file, mode=mode, data_root=root)

    def pairs(subset: UttSet, keys: list[str]):
        return [(keys[label], splits.abspath(p)) for p, label in zip(subset.paths, subset.labels)]

    return Source(os.fspath(split_file), pairs(splits.train, splits.speakers), pairs(splits.val, splits.speakers),
                  [splits.abspath(m) for m in splits.missing])


def read_train_list(path, roots) -> Source:
    """`<speaker> <path>` lines (voxceleb_trainer's train_list.txt); see the module docstring for where the
    paths are looked up. Files found nowhere are counted in Source.missing."""
    path = os.fspath(path)
    folders = [scan_folder(r) for r in roots]
    train, missing = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].endswith(AUDIO_EXTENSIONS):
                raise ListFormatError(f"{path}:{lineno}: expected '<speaker> <path>.m4a|.wav', got {line.strip()!r}")
            found = _locate(fields[1], folders)
            if found is None:
                missing.append(fields[1])
            else:
                train.append((fields[0], found))
    if not train and not missing:
        raise ListFormatError(f"{path}: no utterances")
    return Source(path, train, [], missing)


def _locate(rel: str, folders: list[str]) -> str | None:
    candidates = [rel] if os.path.isabs(rel) else [os.path.join(f, rel) for f in folders]
    for cand in candidates:
        if os.path.isfile(cand):
            return os.path.abspath(cand)
        m4a = os.path.splitext(cand)[0] + ".m4a"
        if cand.endswith(".wav") and os.path.isfile(m4a):
            return os.path.abspath(m4a)
    return None


def merge(sources: list[Source], mode: str, missing_log=None) -> Splits:
    """One Splits over all sources: labels over the sorted union of the training speakers, absolute paths
    (Splits.wav_dir is empty, so Splits.abspath returns them unchanged), no test set."""
    seen: dict[str, str] = {}
    for src in sources:
        for _, p in src.train + src.val:
            if p in seen:
                raise ListFormatError(f"{p}: listed by both {seen[p]} and {src.name} (the same root twice?)")
            seen[p] = src.name
    speakers = sorted({s for src in sources for s, _ in src.train})
    label_of = {k: i for i, k in enumerate(speakers)}
    missing = [m for src in sources for m in src.missing]
    _report_missing(missing, ", ".join(src.name for src in sources), missing_log)

    def uttset(pairs):
        pairs = [(s, p) for s, p in pairs if s in label_of]
        return UttSet([p for _, p in pairs], np.asarray([label_of[s] for s, _ in pairs], dtype=np.int64))

    train = uttset([pair for src in sources for pair in src.train])
    val = uttset([pair for src in sources for pair in src.val])
    return Splits(train, val, UttSet([], np.zeros(0, dtype=np.int64)), speakers, [], mode, "", "current", missing)


def train_list_text(splits: Splits) -> str:
    """The training utterances as `<speaker> <absolute path>` lines (read back by read_train_list), so that
    a resumed run trains on the list it started with even if the folders changed since."""
    return "".join(f"{splits.speakers[label]} {p}\n" for p, label in zip(splits.train.paths, splits.train.labels))


def training_splits(roots, mode: str, split_files: dict | None = None, train_list=None, progress: bool = False,
                    missing_log=None) -> Splits:
    """The training and validation sets of several roots (merge of their sources): a root with an
    iden_split.txt (split_files[root]) gives its splits, a root without one is scanned; with `train_list`
    the list gives every training utterance and the roots with a split only their validation utterances."""
    split_files = split_files or {}
    if train_list is not None and mode != "verification":
        raise ListFormatError(f"--train-list {train_list}: a list of training utterances has no identification "
                              "split; train on it with --mode verification")
    sources = [read_train_list(train_list, roots)] if train_list is not None else []
    for root in roots:
        split_file = split_files.get(root)
        if split_file is not None:
            src = list_source(split_file, root, mode)
            if train_list is not None:
                src.train = []
            sources.append(src)
        elif train_list is None:
            sources.append(scanned_source(root, mode, progress))
    return merge(sources, mode, missing_log)
