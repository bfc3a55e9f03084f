"""Random crops with the paper's augmentation (repetition + time reversal)."""

from __future__ import annotations

import numpy as np


class CropError(ValueError):
    """A recording too short for a crop without augmentation (and repetition not allowed)."""


def crop_params(
    n: int, length: int, rng: np.random.Generator, augment: bool = True, repeat_short: bool = False
) -> tuple[int, bool, bool]:
    """Draw a crop's (start, reversed, wraps) for a recording of n samples.

    augment=True: the recording is repeated (as often as needed), start uniform in [0, n), reversed with
    probability 0.5. Draw order: start, then the reversal coin -- the same numbers whoever crops.
    augment=False: start uniform in [0, n - length] (no wrap, no reversal); n < length is a CropError unless
    repeat_short, in which case the recording is repeated and start is uniform in [0, n).
    (The paper's script draws the start in [0, n - length); the last start is included here so that a
    recording of exactly `length` samples works.)
    """
    if n <= 0:
        raise CropError("empty recording")
    if augment:
        start = int(rng.integers(0, n))
        reverse = bool(rng.random() < 0.5)
        return start, reverse, True
    if n < length:
        if not repeat_short:
            raise CropError(
                f"recording of {n} samples is shorter than the crop ({length}) and "
                "augmentation is off (pass repeat_short=True to repeat it)"
            )
        return int(rng.integers(0, n)), False, True
    return int(rng.integers(0, n - length + 1)), False, False


def apply_crop(signal: np.ndarray, length: int, start: int, reverse: bool, wraps: bool) -> np.ndarray:
    """Cut the crop described by crop_params from `signal` (n,) -> (length,), same dtype."""
    n = len(signal)
    if wraps:
        # the crop of the repeated recording x ++ x ++ ... starting at `start`
        idx = (start + np.arange(length)) % n
        crop = signal[idx]
    else:
        crop = signal[start : start + length].copy()
    return crop[::-1].copy() if reverse else crop


def random_crop(
    signal, length: int, rng: np.random.Generator, augment: bool = True, repeat_short: bool = False
) -> np.ndarray:
    """One crop of `length` samples from `signal` (n,) with the paper's rules (see crop_params).

    rng: an explicit np.random.Generator (all randomness comes from it). Returns (length,) of signal's dtype.
    """
    signal = np.asarray(signal)
    start, reverse, wraps = crop_params(len(signal), length, rng, augment, repeat_short)
    return apply_crop(signal, length, start, reverse, wraps)
