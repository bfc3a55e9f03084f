"""A synthetic corpus in VoxCeleb2's layout and format (AAC in .m4a, encoded with PyAV), for the m4a path:

    dev/aac/idNNNNN/<video>/NNNNN.m4a   the training speakers (VoxCeleb2 dev, as vox2_dev_aac.zip unpacks)
    aac/idNNNNN/<video>/NNNNN.m4a       the test speakers (as vox2_test_aac.zip unpacks)
    vox2_meta.csv                       VoxCeleb2 ID, VGGFace2 ID, Gender, Set (dev / test)
    train_list.txt                      voxceleb_trainer's format: `idNNNNN idNNNNN/<video>/NNNNN.m4a` (dev)
    veri_test.txt                       trials over the test speakers, paths relative to aac/

The voices, channels and utterances are voxdata.synth's (same seed, same speakers and recordings); the ids are
VoxCeleb2's (id00001, ...), so none is a VoxCeleb1 test id. `trainAug.py --data-root OUT --mode verification`
scans dev/aac; `test_verification.py --data-root OUT` reads veri_test.txt against aac/.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from .m4a import write_m4a
from .synth import check_corpus_args, make_speaker, make_trials, plan_corpus, synth_utterance


def _job(args) -> str:
    seed, s, v, u, path, min_dur, max_dur = args
    write_m4a(path, synth_utterance(seed, s, v, u, min_dur, max_dur))
    return path


def make_vox2_corpus(out, speakers: int = 40, utterances: int = 30, test_speakers: int = 10, seed: int = 0,
                     min_videos: int = 4, max_videos: int = 6, min_dur: float = 4.0, max_dur: float = 10.0,
                     trials: int = 2000, workers: int | None = None, progress: bool = True) -> dict:
    """Write the corpus under `out` (see the module doc); the last `test_speakers` speakers are the test set.
    Returns a summary dict like voxdata.synth.make_corpus."""
    from tqdm import tqdm

    check_corpus_args(speakers, utterances, test_speakers, min_dur, max_dur)
    out = os.fspath(out)
    plan = plan_corpus(seed, speakers, utterances, max(1, min_videos), max(min_videos, max_videos))
    jobs, dev_lines, test_utts = [], [], {}
    for s, (_, videos) in enumerate(plan):
        sid = f"id{s + 1:05d}"
        test = s >= speakers - test_speakers
        folder = os.path.join(out, "aac" if test else os.path.join("dev", "aac"))
        for v, (vid, count) in enumerate(videos):
            for u in range(count):
                rel = f"{sid}/{vid}/{u + 1:05d}.m4a"
                jobs.append((seed, s, v, u, os.path.join(folder, rel), min_dur, max_dur))
                if test:
                    test_utts.setdefault(sid, []).append(rel)
                else:
                    dev_lines.append(f"{sid} {rel}\n")
    os.makedirs(out, exist_ok=True)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    with tqdm(total=len(jobs), desc="synth m4a", unit="utt", disable=not progress) as bar:
        if workers <= 1:
            for j in jobs:
                bar.update(bool(_job(j)))
        else:
            with ProcessPoolExecutor(workers) as ex:
                for _ in ex.map(_job, jobs, chunksize=8):
                    bar.update()
    tr = make_trials(seed, test_utts, trials)
    with open(os.path.join(out, "veri_test.txt"), "w") as f:
        f.writelines(f"{lab} {a} {b}\n" for lab, a, b in tr)
    with open(os.path.join(out, "train_list.txt"), "w") as f:
        f.writelines(dev_lines)
    with open(os.path.join(out, "vox2_meta.csv"), "w") as f:
        f.write("VoxCeleb2 ID,VGGFace2 ID,Gender,Set\n")
        for s in range(speakers):
            g = make_speaker(seed, s).gender
            f.write(f"id{s + 1:05d},n{s + 1:06d},{g},{'test' if s >= speakers - test_speakers else 'dev'}\n")
    return {"out": out, "speakers": speakers, "utterances": len(jobs),
            "test_speakers": sorted(test_utts), "trials": len(tr)}
