"""Fréchet distance between two sets of feature vectors (as in FID, in any feature space).

Reads nothing, writes nothing. d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the matrix
square root from `scipy.linalg.sqrtm` (float64). This is the squared distance, as FID reports it.

    python -c "import numpy as np; from compute.core.frechet import frechet_distance as f; print(f(np.random.randn(500, 4), np.random.randn(500, 4)))"
"""
from __future__ import annotations

import numpy as np
import scipy.linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mean [D], covariance [D, D]) in float64 (unbiased covariance)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats: need features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """Squared Fréchet distance between Gaussians N(mu1, s1) and N(mu2, s2)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise the diagonal (as in FID code)
        off = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)))


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Squared Fréchet distance between the Gaussians fitted to features1 [N1, D] and features2 [N2, D]."""
    return frechet_from_stats(*feature_stats(features1), *feature_stats(features2))
