"""Crop rules: repetition with wrap-around, reversal, short files, determinism."""

import numpy as np
import pytest

from voxdata import CropError, crop_params, random_crop


def test_augmented_crop_is_a_window_of_the_repeated_recording():
    x = np.arange(1000, dtype=np.int16)
    rng = np.random.default_rng(0)
    rep = np.concatenate([x, x, x])
    seen_reversed = 0
    for _ in range(200):
        state = rng.bit_generator.state
        c = random_crop(x, 700, rng, augment=True)
        # the same draws, independently: start in [0, 1000), then the coin
        r2 = np.random.default_rng()
        r2.bit_generator.state = state
        start = int(r2.integers(0, 1000))
        rev = r2.random() < 0.5
        want = rep[start : start + 700]
        np.testing.assert_array_equal(c, want[::-1] if rev else want)
        seen_reversed += rev
    assert 70 < seen_reversed < 130  # probability 0.5


def test_short_recording_with_augmentation_repeats_enough():
    x = np.arange(7, dtype=np.int16)  # far shorter than the crop: x ++ x would not be enough
    c = random_crop(x, 48241, np.random.default_rng(3))
    assert c.shape == (48241,) and c.dtype == np.int16
    d = np.diff(c.astype(int))
    assert set(np.unique(d)) <= {1, -6} or set(np.unique(d)) <= {-1, 6}  # forward or reversed cycles


def test_no_augmentation_no_wrap_no_reversal():
    x = np.arange(1000, dtype=np.int16)
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(300):
        c = random_crop(x, 990, rng, augment=False)
        assert np.all(np.diff(c) == 1)
        starts.add(int(c[0]))
    assert starts == set(range(11))  # uniform over [0, n - length]
    np.testing.assert_array_equal(random_crop(x, 1000, rng, augment=False), x)


def test_no_augmentation_short_file():
    x = np.arange(100, dtype=np.int16)
    with pytest.raises(CropError, match="shorter than the crop"):
        random_crop(x, 200, np.random.default_rng(0), augment=False)
    c = random_crop(x, 250, np.random.default_rng(0), augment=False, repeat_short=True)
    assert c.shape == (250,) and np.all(np.diff(c.astype(int)) % 100 == 1)


def test_empty_and_determinism():
    with pytest.raises(CropError):
        random_crop(np.zeros(0, np.int16), 10, np.random.default_rng(0))
    x = np.random.default_rng(5).integers(-100, 100, 5000).astype(np.int16)
    a = [random_crop(x, 1000, np.random.default_rng(42)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert crop_params(5000, 1000, np.random.default_rng(42)) == crop_params(
        5000, 1000, np.random.default_rng(42)
    )
