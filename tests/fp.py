"""The rounding bounds tests derive their tolerances from, so that a comparison holds on any CPU, BLAS, thread
count or summation order (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1):

- a sum of k terms, or a k-term dot product, computed in floating point with unit roundoff u (in any order,
  blocked, pairwise or with FMA) is within gamma_k * sum|terms| of the exact value, gamma_k = k u / (1 - k u);
- two implementations of the same sum (ours and a NumPy reference) are therefore within twice that of each
  other.
"""

import numpy as np

U32 = 2.0**-24          # float32 unit roundoff (half of np.finfo(np.float32).eps)
U64 = 2.0**-53          # float64


def gamma(k: int, u: float = U64) -> float:
    assert k * u < 1
    return k * u / (1 - k * u)


def matmul_bound(a, b, u: float = U64, extra_terms=None) -> np.ndarray:
    """Elementwise bound on |ours - reference| for a @ b (+ extra_terms, e.g. a bias, counted as one more
    term of each sum) computed by two implementations in precision u: 2 gamma_(k+1) (|a| @ |b| + |extra|)."""
    a, b = np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64))
    mag = a @ b
    k = a.shape[-1]
    if extra_terms is not None:
        mag = mag + np.abs(np.asarray(extra_terms, dtype=np.float64))
        k += 1
    return 2 * gamma(k, u) * mag


def assert_within(got, want, bound) -> None:
    """|got - want| <= bound, elementwise (bound: an array broadcast against them, or a number)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err = np.abs(got - want)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    bad = err > bound
    assert not bad.any(), (f"{int(bad.sum())} of {err.size} values beyond the rounding bound; worst "
                           f"|diff| {err[bad].max():.3g} against a bound of {bound[bad][err[bad].argmax()]:.3g}")
