"""The Gaussian mechanism on a sum of per-record vectors: what a site releases instead of an
exact statistic (evaluation answers, entity and group counts).

Each record i contributes a vector v_i clipped to L2 norm <= Delta (so adding or removing one
record moves the sum by at most Delta: the L2 sensitivity), and the site releases
sum_i v_i + N(0, (z * Delta)^2 I). One answer is dp-accounting's GaussianDpEvent(z); the ledger
stores it as a release with q = 1 and k = 1 (``DpRelease(z, 1.0, 1)``), composed with every other
release on the same records. Our own few lines: Opacus and dp-accounting account for this
mechanism but neither applies it to a vector sum.
"""

from __future__ import annotations

import numpy as np

from common.privacy.accounting import DpRelease


def clip_rows(vectors: np.ndarray, sensitivity: float) -> np.ndarray:
    """Each row scaled down to L2 norm <= ``sensitivity`` (rows within it are unchanged)."""
    if not sensitivity > 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.minimum(1.0, sensitivity / np.maximum(norms, 1e-300))


def gaussian_sum(
    vectors: np.ndarray, sensitivity: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """sum_i clip(v_i) + N(0, (z * Delta)^2) per coordinate, z = ``noise_multiplier``."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier z must be > 0, got {noise_multiplier}")
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"expected one vector per record (2-D), got shape {vectors.shape}")
    total = clip_rows(vectors, sensitivity).sum(axis=0)
    return total + rng.normal(0.0, noise_multiplier * sensitivity, size=total.shape)


def gaussian_release(noise_multiplier: float) -> DpRelease:
    """One Gaussian answer as the ledger records it: sigma = z, q = 1, one step."""
    return DpRelease(noise_multiplier, 1.0, 1)
