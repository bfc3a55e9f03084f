"""Noise and reverberation augmentation (voxdata.augment) against the arithmetic: the SNR of the noise in the
int16 output is the drawn one (per babble file too), the reverberation is scipy.signal's convolution with the
energy-normalised RIR; every example is seeded by (seed, batch, row) alone, so slices, worker counts and
resumes give the same crops; the draws follow the recipe's ranges; bad folders and files are one line."""

import numpy as np
import pytest
import scipy.signal

from voxdata import AudioError, TrainBatches, read_iden_split, read_wav, write_wav
from voxdata.augment import AugmentConfig, Augmenter, load_augmenter, reverberate, scan_bank
from voxdata.crops import apply_crop
from voxdata.synth_noise import make_noise_folders

LENGTH = 8000


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_noise_folders(tmp_path_factory.mktemp("noise"), seed=1, noise=3, music_files=3, speech=8, rooms=1,
                              rirs_per_room=3, min_dur=0.3, max_dur=1.0)


@pytest.fixture(scope="module")
def crops():
    """Speech-like int16 crops at a level far from clipping (SNR >= 0 dB keeps the sum in range)."""
    from voxdata.synth import synth_utterance

    return np.stack([synth_utterance(5, s, 0, 0, 0.6, 0.6)[:LENGTH] // 4 for s in range(12)])


def augmenter(folders, **kw):
    config = AugmentConfig(noise_dir=folders["musan"], rir_dir=folders["rirs"], **kw)
    aug, bad = load_augmenter(config)
    assert bad == []
    return aug


def noise_crop(aug, category, index, start, wraps):
    """Independent of Augmenter.noise_crop: the whole file, cut (or repeated) here."""
    x = read_wav(aug.bank.noise[category][index][0]).astype(np.float64)
    return apply_crop(x, LENGTH, start, False, True) if wraps else x[start : start + LENGTH]


def test_snr_of_the_mixed_noise_is_the_drawn_one(folders, crops):
    aug = augmenter(folders, noise_prob=1.0, rir_prob=0.0)
    seen = set()
    for k in range(6):
        plans = aug.plans(len(crops), LENGTH, seed=3, k=k)
        out = aug.apply(crops, plans)
        for b, plan in enumerate(plans):
            seen.add(plan.category)
            clean = crops[b].astype(np.float64)
            residual = out[b].astype(np.float64) - clean                 # the noise as it reached the int16 output
            p_clean = np.mean(clean**2)
            parts = np.stack([noise_crop(aug, plan.category, i, s, w) for i, s, w, _ in plan.files])   # (J, L)
            # the gain of each noise file, recovered from the output by least squares (babble: 3-7 files)
            gains, *_ = np.linalg.lstsq(parts.T, residual, rcond=None)
            snr = [f[3] for f in plan.files]
            measured = 10 * np.log10(p_clean / (gains**2 * np.mean(parts**2, axis=1)))
            # the output is rounded to int16: an error of at most 0.5 per sample, i.e. a relative error of the
            # fitted gain up to 0.5 / rms(gain * part); in dB 20 log10(1 + that), doubled for the fit
            tol = 2 * 20 * np.log10(1 + 0.5 / (np.abs(gains) * np.sqrt(np.mean(parts**2, axis=1))))
            np.testing.assert_array_less(np.abs(measured - snr), tol + 1e-9)
            if len(plan.files) == 1:     # a single file: the plain SNR of the output's noise
                direct = 10 * np.log10(p_clean / np.mean(residual**2))
                rms = np.sqrt(np.mean(residual**2))
                assert abs(direct - snr[0]) <= 20 * np.log10(1 + 0.5 / rms) + 1e-9
    assert seen == {"noise", "music", "speech"}


def test_reverberation_is_scipys_convolution_with_the_normalised_rir(folders, crops):
    rng = np.random.default_rng(0)
    x = crops[:4].astype(np.float32)
    rirs = [read_wav(p).astype(np.float64) for p, _ in scan_bank(AugmentConfig(rir_dir=folders["rirs"])).rirs[:4]]
    rirs[1] = rng.standard_normal(37)                                     # any length
    got = reverberate(x, rirs).astype(np.float64)
    for r in range(4):
        h = rirs[r] / np.linalg.norm(rirs[r])
        ref = scipy.signal.convolve(x[r].astype(np.float64), h, mode="full")[:LENGTH]
        # float32 FFT convolution: error <= c log2(n) eps ||x||_2 ||h||_1 (c = 5 covers rfft, product, irfft)
        n = LENGTH + len(h) - 1
        bound = 5 * np.log2(n) * np.finfo(np.float32).eps * np.linalg.norm(x[r]) * np.abs(h).sum()
        assert np.linalg.norm(got[r] - ref) <= bound, r
    # through the Augmenter: every row reverberated, then rounded to int16 (clipped: none here)
    aug = augmenter(folders, noise_prob=0.0, rir_prob=1.0)
    plans = aug.plans(len(crops), LENGTH, seed=1, k=0)
    out = aug.apply(crops, plans)
    for b, plan in enumerate(plans):
        h = read_wav(aug.bank.rirs[plan.rir][0]).astype(np.float64)
        ref = scipy.signal.convolve(crops[b].astype(np.float64), h / np.linalg.norm(h))[:LENGTH]
        assert np.max(np.abs(out[b] - np.rint(ref))) <= 1


def test_reverberation_comes_before_the_noise_whose_snr_is_the_reverberated_crops(folders, crops):
    """Both on every example: the output is the float64 reference (scipy's convolution with the normalised RIR,
    then each noise file scaled to its SNR against the reverberated crop) within the float32 arithmetic's bound,
    and the other order (noise first, against the dry crop, then reverberated) lies outside that bound."""
    eps = np.finfo(np.float32).eps
    aug = augmenter(folders, noise_prob=1.0, rir_prob=1.0)
    for k in range(2):
        plans = aug.plans(len(crops), LENGTH, seed=9, k=k)
        out = aug.apply(crops, plans).astype(np.float64)
        for b, plan in enumerate(plans):
            dry = crops[b].astype(np.float64)
            h = read_wav(aug.bank.rirs[plan.rir][0]).astype(np.float64)
            h /= np.linalg.norm(h)
            parts = np.stack([noise_crop(aug, plan.category, i, s, w) for i, s, w, _ in plan.files])    # (J, L)
            power = np.mean(parts**2, axis=1) * 10 ** (np.array([f[3] for f in plan.files]) / 10)
            wet = scipy.signal.convolve(dry, h)[:LENGTH]
            ref = wet + np.sqrt(np.mean(wet**2) / power) @ parts
            other = scipy.signal.convolve(dry + np.sqrt(np.mean(dry**2) / power) @ parts, h)[:LENGTH]
            assert np.abs(ref).max() < 32767                                        # nothing clipped
            # the float32 FFT convolution's error (the bound of the test above) bounds every sample of the
            # reverberated row and, through ||x||_2, the relative error of each noise gain; then the gain's
            # float32 cast, the product and the sum (3 eps), and the rounding to int16 (0.5)
            reverb = 5 * np.log2(LENGTH + len(h) - 1) * eps * np.linalg.norm(dry) * np.abs(h).sum()
            gains = np.sqrt(np.mean(wet**2) / power)
            noise = np.sum(gains * np.abs(parts).max(axis=1)) * (reverb / np.linalg.norm(wet) + 3 * eps)
            bound = reverb + noise + 0.5
            assert np.abs(out[b] - ref).max() <= bound, (k, b)
            assert np.abs(out[b] - other).max() > bound, (k, b)


def test_each_example_is_seeded_by_batch_and_row_alone(folders, crops):
    aug = augmenter(folders)
    full = aug(crops, seed=7, k=3)
    assert not np.array_equal(full, crops)
    # a process building rows 5..9 of the global batch (data parallel) gets exactly those rows
    np.testing.assert_array_equal(aug(crops[5:9], seed=7, k=3, rows=(5, 9), batch_size=len(crops)), full[5:9])
    # another batch, another seed: other draws
    assert not np.array_equal(aug(crops, seed=7, k=4), full)
    assert not np.array_equal(aug(crops, seed=8, k=3), full)


def test_loader_batches_are_the_same_for_any_worker_count_and_resume(folders, corpus):
    from voxdata import train_loader

    splits = read_iden_split(corpus / "iden_split.txt")
    paths, labels = splits.abspaths(splits.train), splits.train.labels
    aug = augmenter(folders)

    def batches(workers, start, n):
        it = iter(train_loader(paths, labels, batch_size=4, frames=30, seed=2, start_batch=start,
                               num_workers=workers, augmenter=aug, pin_memory=False))
        return [next(it)[0].numpy() for _ in range(n)]

    ref = batches(0, 0, 4)
    for a, b in zip(ref, batches(2, 0, 4)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ref[2:], batches(0, 2, 2)):                 # resumed at batch 2
        np.testing.assert_array_equal(a, b)
    plain = TrainBatches(paths, labels, batch_size=4, frames=30, seed=2)
    assert not np.array_equal(plain.batch(0)[0], ref[0])           # the augmentation did something


def test_draws_follow_the_recipe(folders):
    aug = augmenter(folders)
    plans = aug.plans(4000, LENGTH, seed=0, k=0)
    rir = np.mean([p.rir is not None for p in plans])
    noisy = [p for p in plans if p.category is not None]
    # binomial: 5 standard deviations of a proportion over 4,000 draws
    assert abs(rir - 0.2) < 5 * np.sqrt(0.2 * 0.8 / 4000)
    assert abs(len(noisy) / 4000 - 0.6) < 5 * np.sqrt(0.6 * 0.4 / 4000)
    ranges = {"noise": ((0, 15), {1}), "music": ((5, 15), {1}), "speech": ((13, 20), set(range(3, 8)))}
    for cat, ((lo, hi), counts) in ranges.items():
        mine = [p for p in noisy if p.category == cat]
        assert abs(len(mine) / len(noisy) - 1 / 3) < 5 * np.sqrt(2 / 9 / len(noisy))
        assert {len(p.files) for p in mine} == counts
        snr = np.array([f[3] for p in mine for f in p.files])
        assert lo <= snr.min() and snr.max() <= hi and snr.max() - snr.min() > 0.9 * (hi - lo)
        for p in mine:
            assert len({f[0] for f in p.files}) == len(p.files)          # babble: different files


def test_bad_folders_and_files_are_one_line(folders, tmp_path):
    with pytest.raises(ValueError, match="--noise .*nowhere: no such directory"):
        load_augmenter(AugmentConfig(noise_dir=str(tmp_path / "nowhere")))
    write_wav(tmp_path / "musan" / "noise" / "free-sound" / "n.wav", np.ones(100, dtype=np.int16))
    with pytest.raises(ValueError, match="no .wav files under music/"):
        load_augmenter(AugmentConfig(noise_dir=str(tmp_path / "musan")))
    with pytest.raises(ValueError, match="--rir-prob 1.5: must be in"):
        load_augmenter(AugmentConfig(rir_dir=folders["rirs"], rir_prob=1.5))
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    write_wav(rirs / "good.wav", np.array([0, 1000, 300, 50], dtype=np.int16))
    (rirs / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(ValueError) as e:
        load_augmenter(AugmentConfig(rir_dir=str(rirs)))
    assert str(rirs / "bad.wav") in str(e.value) and "--skip-bad-audio" in str(e.value)
    aug, bad = load_augmenter(AugmentConfig(rir_dir=str(rirs)), skip_bad=True)
    assert len(aug.bank.rirs) == 1 and len(bad) == 1 and bad[0].startswith(str(rirs / "bad.wav"))
    assert isinstance(aug, Augmenter) and issubclass(AudioError, ValueError)


def test_a_process_slice_of_the_batch_equals_those_rows_of_the_whole_batch(folders, corpus):
    """Data parallel: a process building rows lo..hi-1 (from the recordings' lengths, reading only its rows) gets
    exactly those rows of the whole augmented batch, for every split of the batch."""
    from voxdata import scan_audio

    splits = read_iden_split(corpus / "iden_split.txt")
    paths, labels = splits.abspaths(splits.train), splits.train.labels
    samples = scan_audio(paths, workers=1).samples
    lengths = [samples[p] for p in paths]
    aug = augmenter(folders, noise_prob=0.7, rir_prob=0.5)
    whole = TrainBatches(paths, labels, batch_size=6, frames=30, seed=4, augmenter=aug)
    for k in range(3):
        crops, labs = whole.batch(k)
        for lo, hi in ((0, 3), (3, 6), (0, 1), (1, 6), (5, 6)):
            part = TrainBatches(paths, labels, batch_size=6, frames=30, seed=4, augmenter=aug, rows=(lo, hi),
                                lengths=lengths)
            got, got_labels = part.batch(k)
            np.testing.assert_array_equal(got, crops[lo:hi], err_msg=f"batch {k} rows {lo}..{hi - 1}")
            np.testing.assert_array_equal(got_labels, labs[lo:hi])
    plain = TrainBatches(paths, labels, batch_size=6, frames=30, seed=4)
    assert not np.array_equal(plain.batch(0)[0], whole.batch(0)[0])     # the augmentation did something
