"""VoxCeleb1 list files: iden_split.txt (identification / verification splits) and trial lists.

Path rules (explicit, so that evaluation finds the same files):
- current layout, lines like `1 id10001/1zcIwhmdeo4/00001.wav`: paths are relative to `wav_dir`, which
  defaults to `<data_root>/wav` (or `<data_root>/aac` where only that exists: VoxCeleb2; `.m4a` paths too);
- 2017 layout, lines like `1 A.J._Buckley/1zcIwhmdeo4_0000001.wav`: paths are relative to `wav_dir`, which
  defaults to `<data_root>` itself.
`data_root` defaults to the folder holding the list file. The speaker of an utterance is its first path
component (an id or a name).

Verification test speakers: from `vox1_meta.csv` (rows with Set == test; the id and the name both count)
when one is given or found (in data_root, else beside the list file, else in the project's lists/);
otherwise VoxCeleb1's rule: ids id10270 ... id10309 (current
layout) or names starting with "E" (2017 layout).

Labels are dense 0..K-1 over the sorted speaker keys, so they do not depend on line order or on missing
files. save_labels/load_labels store the label -> speaker map (JSON) next to the results.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

TEST_ID_RANGE = (10270, 10309)  # VoxCeleb1 verification test speakers, inclusive
# The project's lists/ folder (lists/README.md: lists may live there instead of the data root).
PROJECT_LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lists")


AUDIO_EXTENSIONS = (".wav", ".m4a")   # what list lines may name: VoxCeleb1's wav, VoxCeleb2's AAC


def audio_dir(data_root) -> str:
    """The folder that list paths (current layout) are relative to: <data_root>/wav (VoxCeleb1), else
    <data_root>/aac when only that exists (VoxCeleb2's test set as its zip unpacks)."""
    wav, aac = os.path.join(data_root, "wav"), os.path.join(data_root, "aac")
    return aac if not os.path.isdir(wav) and os.path.isdir(aac) else wav


class ListFormatError(ValueError):
    """A malformed line in a list file; the message names the file and the line number."""


@dataclass
class UttSet:
    """Utterances of one split: `paths` relative to the Splits' wav_dir, `labels` int64 (n,)."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Splits:
    """train / val / test sets with integer labels.

    speakers: label -> speaker key of train/val (and of test in identification mode).
    test_speakers: label -> speaker key of the test set (verification: the held-out speakers; identification:
    the same list as `speakers`). missing: list paths whose file was not found (dropped from the sets).
    """

    train: UttSet
    val: UttSet
    test: UttSet
    speakers: list[str]
    test_speakers: list[str]
    mode: str
    wav_dir: str
    layout: str
    missing: list[str] = field(default_factory=list)

    def abspath(self, rel: str) -> str:
        return os.path.join(self.wav_dir, rel)

    def abspaths(self, subset: UttSet) -> list[str]:
        return [os.path.join(self.wav_dir, p) for p in subset.paths]

    def save_labels(self, path) -> None:
        save_labels(path, self)


def save_labels(path, splits: Splits) -> None:
    """Write the label maps as JSON: {"mode", "layout", "speakers", "test_speakers"}."""
    with open(path, "w") as f:
        json.dump(
            {
                "mode": splits.mode,
                "layout": splits.layout,
                "speakers": splits.speakers,
                "test_speakers": splits.test_speakers,
            },
            f,
            indent=1,
        )


def load_labels(path) -> dict:
    """Read save_labels' JSON; returns the dict (speakers[label] is the speaker key)."""
    with open(path) as f:
        d = json.load(f)
    for key in ("mode", "speakers", "test_speakers"):
        if key not in d:
            raise ListFormatError(f"{path}: no '{key}' in label file")
    return d


def decoded_lines(f, path):
    """(line number, text) of the lines of a list file opened in binary, as UTF-8 (VoxCeleb's lists are ASCII):
    a line that is not is a ListFormatError naming the file, the line and the byte, not a UnicodeDecodeError."""
    for lineno, raw in enumerate(f, start=1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ListFormatError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                  f"{e.start + 1}): convert the file to UTF-8 or fix that line") from None


def _layout_of(rel: str) -> str:
    parts = rel.split("/")
    if len(parts) == 3:
        return "current"
    if len(parts) == 2:
        return "2017"
    return ""


def read_meta(path) -> dict[str, str]:
    """vox1_meta.csv (tab separated, header `VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`) ->
    {speaker key: set}, with both the id and the name as keys."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        rows = list(csv.reader((text for _, text in decoded_lines(f, path)), delimiter="\t"))
    if not rows:
        raise ListFormatError(f"{path}: empty meta file")
    header = [h.strip().lower() for h in rows[0]]
    try:
        i_id, i_name, i_set = header.index("voxceleb1 id"), header.index("vggface1 id"), header.index("set")
    except ValueError:
        raise ListFormatError(f"{path}:1: header must name 'VoxCeleb1 ID', 'VGGFace1 ID' and 'Set'") from None
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(i_id, i_name, i_set):
            raise ListFormatError(
                f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(row)}"
            )
        s = row[i_set].strip().lower()
        out[row[i_id].strip()] = s
        out[row[i_name].strip()] = s
    return out


def find_meta(data_root, list_dir) -> str | None:
    """vox1_meta.csv from the data root, else beside the list file, else the project's lists/ folder."""
    for folder in (data_root, list_dir, PROJECT_LISTS):
        cand = os.path.join(folder, "vox1_meta.csv")
        if os.path.isfile(cand):
            return cand
    return None


def _default_test_speaker(key: str, layout: str) -> bool:
    if layout == "2017":
        return key.startswith("E")
    if key.startswith("id") and key[2:].isdigit():
        return TEST_ID_RANGE[0] <= int(key[2:]) <= TEST_ID_RANGE[1]
    return False


def parse_iden_split(path) -> list[tuple[int, str]]:
    """Lines `<split> <relative path>` -> [(split, path)]; blank lines skipped, anything else malformed. An
    utterance listed twice is an error: in two splits it would be trained on and tested on (a leak), in one
    split it would count twice."""
    entries = []
    layout = None
    seen: dict[str, tuple[int, int]] = {}              # path -> (its first line, its split there)
    twice: list[tuple[int, int, int, int, str]] = []   # (line, first line, first split, split, path)
    with open(path, "rb") as f:
        for lineno, line in decoded_lines(f, path):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or fields[0] not in ("1", "2", "3"):
                raise ListFormatError(
                    f"{path}:{lineno}: expected '<1|2|3> <relative path>', got {line.strip()!r}"
                )
            lay = _layout_of(fields[1])
            if not lay or not fields[1].endswith(AUDIO_EXTENSIONS):
                raise ListFormatError(
                    f"{path}:{lineno}: path {fields[1]!r} is neither "
                    "speaker/video/NNNNN.wav (or .m4a) nor Name/video_NNNNNNN.wav"
                )
            if layout is None:
                layout = lay
            elif lay != layout:
                raise ListFormatError(
                    f"{path}:{lineno}: {fields[1]!r} is in the {lay} layout, earlier lines "
                    f"in the {layout} layout"
                )
            if fields[1] in seen:
                twice.append((lineno, *seen[fields[1]], int(fields[0]), fields[1]))
            seen.setdefault(fields[1], (lineno, int(fields[0])))
            entries.append((int(fields[0]), fields[1]))
    if not entries:
        raise ListFormatError(f"{path}: no utterances")
    _refuse_twice(path, twice)
    return entries


def _refuse_twice(path, twice) -> None:
    """An utterance in two splits (a train/test leak) or twice in one split: ListFormatError naming the lines."""
    leaks = [t for t in twice if t[2] != t[3]]
    if leaks:
        ln, first, first_split, split, rel = leaks[0]
        raise ListFormatError(f"{path}:{ln}: {rel} is in split {split} here and in split {first_split} on line "
                              f"{first} ({len(leaks)} utterances are in two splits): it would be trained on and "
                              "tested on; keep each utterance in one split")
    if twice:
        ln, first, _, _, rel = twice[0]
        raise ListFormatError(f"{path}:{ln}: {rel} repeats line {first} ({len(twice)} repeated lines): it would "
                              "count twice; remove the repeats")


def _report_missing(missing: list[str], what, missing_log) -> None:
    if not missing:
        return
    msg = f"{len(missing)} files listed in {what} were not found (first: {missing[0]})"
    if missing_log:
        with open(missing_log, "w") as f:
            f.write("\n".join(missing) + "\n")
        msg += f"; all listed in {missing_log}"
    log.warning(msg)


def read_iden_split(
    path,
    mode: str = "identification",
    data_root=None,
    wav_dir=None,
    meta=None,
    check_files: bool = True,
    missing_log=None,
) -> Splits:
    """Parse iden_split.txt into train / val / test sets with dense integer labels.

    mode 'identification': train = split 1, val = split 2, test = split 3, labels over all speakers.
    mode 'verification': the test speakers (see the module doc: vox1_meta.csv, else VoxCeleb1's rule) are
    held out; train = splits 1 and 3 of every other speaker, val = their split 2, labels over those speakers;
    test = every utterance of the test speakers, labels indexing `test_speakers`.
    data_root: default the list's folder; wav_dir: default <data_root>/wav (current layout) or <data_root>
    (2017 layout); meta: vox1_meta.csv path, default: find_meta (data_root, the list's folder, lists/).
    check_files: files not found are dropped, counted in Splits.missing, reported once as a warning and, with
    missing_log, all written to that file. A malformed line raises ListFormatError naming file and line.
    """
    if mode not in ("identification", "verification"):
        raise ValueError(f"mode must be 'identification' or 'verification', got {mode!r}")
    path = os.fspath(path)
    entries = parse_iden_split(path)
    layout = _layout_of(entries[0][1])
    data_root = os.fspath(data_root) if data_root is not None else os.path.dirname(os.path.abspath(path))
    if wav_dir is None:
        wav_dir = audio_dir(data_root) if layout == "current" else data_root
    wav_dir = os.fspath(wav_dir)
    keys = sorted({rel.split("/", 1)[0] for _, rel in entries})

    if mode == "identification":
        speakers = test_speakers = keys
    else:
        if meta is None:
            meta = find_meta(data_root, os.path.dirname(os.path.abspath(path)))
        if meta is not None:
            m = read_meta(meta)
            is_test = {k: m.get(k) == "test" for k in keys}
            log.info("verification test speakers from %s", meta)
        else:
            is_test = {k: _default_test_speaker(k, layout) for k in keys}
            log.info("no vox1_meta.csv in %s, %s or %s: test speakers by VoxCeleb1's rule (%s)", data_root,
                     os.path.dirname(os.path.abspath(path)), PROJECT_LISTS,
                     "names starting with E" if layout == "2017" else "id10270..id10309")
        test_speakers = [k for k in keys if is_test[k]]
        speakers = [k for k in keys if not is_test[k]]
        if not test_speakers:
            raise ListFormatError(
                f"{path}: no verification test speakers found (meta: {meta}; rule: "
                f"{'names starting with E' if layout == '2017' else 'id10270..id10309'})"
            )
        if not speakers:
            raise ListFormatError(f"{path}: every speaker is a test speaker; nothing to train on")
    label_of = {k: i for i, k in enumerate(speakers)}
    test_label_of = {k: i for i, k in enumerate(test_speakers)}

    out = {"train": ([], []), "val": ([], []), "test": ([], [])}
    missing = []
    for split, rel in entries:
        key = rel.split("/", 1)[0]
        if mode == "identification":
            name, label = {1: "train", 2: "val", 3: "test"}[split], label_of[key]
        elif key in test_label_of:
            name, label = "test", test_label_of[key]
        else:
            name, label = ("val" if split == 2 else "train"), label_of[key]
        if check_files and not os.path.isfile(os.path.join(wav_dir, rel)):
            missing.append(rel)
            continue
        out[name][0].append(rel)
        out[name][1].append(label)
    _report_missing(missing, path, missing_log)
    subsets = {n: UttSet(p, np.asarray(lab, dtype=np.int64)) for n, (p, lab) in out.items()}
    return Splits(
        subsets["train"],
        subsets["val"],
        subsets["test"],
        list(speakers),
        list(test_speakers),
        mode,
        wav_dir,
        layout,
        missing,
    )


@dataclass
class Trials:
    """A verification trial list: labels int64 (n,) (1 = same speaker), enrol/test relative paths."""

    labels: np.ndarray
    enrol: list[str]
    test: list[str]
    wav_dir: str
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def utterances(self) -> list[str]:
        """Every utterance used by a trial, sorted, once."""
        return sorted(set(self.enrol) | set(self.test))


def read_trials(path, data_root=None, wav_dir=None, check_files: bool = False, missing_log=None) -> Trials:
    """Parse a trial list: lines `<0|1> <path1> <path2>` (veri_test.txt, veri_test2.txt, list_test_all2.txt,
    list_test_hard2.txt). wav_dir follows the same rule as read_iden_split. With check_files, trials whose
    files are missing are dropped, counted in Trials.missing (the missing paths) and reported once."""
    path = os.fspath(path)
    labels, enrol, test = [], [], []
    layout = None
    seen: dict[tuple[str, str], int] = {}     # (path1, path2) -> its first line
    repeats: list[tuple[int, int]] = []       # (line, first line)
    with open(path, "rb") as f:
        for lineno, line in decoded_lines(f, path):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ListFormatError(
                    f"{path}:{lineno}: expected '<0|1> <path1> <path2>', got {line.strip()!r}"
                )
            for p in fields[1:]:
                lay = _layout_of(p)
                if not lay or not p.endswith(AUDIO_EXTENSIONS):
                    raise ListFormatError(f"{path}:{lineno}: {p!r} is not a VoxCeleb utterance path")
                layout = layout or lay
            # (the official lists hold no pair twice in one order; VoxCeleb1-O has 338 pairs in both orders)
            first = seen.setdefault((fields[1], fields[2]), lineno)
            if first != lineno:
                repeats.append((lineno, first))
            labels.append(int(fields[0]))
            enrol.append(fields[1])
            test.append(fields[2])
    if not labels:
        raise ListFormatError(f"{path}: no trials")
    if repeats:
        ln, first = repeats[0]
        raise ListFormatError(f"{path}:{ln}: repeats the trial of line {first} ({len(repeats)} repeated trials): it "
                              "would count twice in the error rates; remove the repeats")
    data_root = os.fspath(data_root) if data_root is not None else os.path.dirname(os.path.abspath(path))
    if wav_dir is None:
        wav_dir = audio_dir(data_root) if layout == "current" else data_root
    wav_dir = os.fspath(wav_dir)
    missing: list[str] = []
    if check_files:
        gone = {u for u in set(enrol) | set(test) if not os.path.isfile(os.path.join(wav_dir, u))}
        if gone:
            missing = sorted(gone)
            _report_missing(missing, path, missing_log)
            keep = [i for i in range(len(labels)) if enrol[i] not in gone and test[i] not in gone]
            labels = [labels[i] for i in keep]
            enrol = [enrol[i] for i in keep]
            test = [test[i] for i in keep]
    return Trials(np.asarray(labels, dtype=np.int64), enrol, test, wav_dir, missing)
