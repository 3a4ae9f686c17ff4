"""Frangi vesselness, as :func:`skimage.filters.frangi` computes it, with shorter Gaussian kernels.

scikit-image builds the Hessian from Gaussian-derivative filters truncated at 100 standard deviations when a
scale is <= 1 (8 otherwise): on a 96 px vessel map the sigma-1 kernels are then 143 taps long, though their
weights beyond 8 standard deviations are below 1e-13. This module uses 8 at every scale and otherwise follows
scikit-image 0.26 step for step (2-D, dark ridges, reflect borders, alpha = beta = 0.5, gamma = half the
largest Hessian norm at the first scale), so the result equals it to float rounding (``tests/test_vessels.py`` compares them) at a
third of the cost. Stored vessel templates therefore do not change.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

TRUNCATE = 8.0


def _hessian(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Hrr, Hrc, Hcc): two first-order Gaussian derivatives in turn (scikit-image's scaling, sigma / sqrt 2)."""
    s = sigma / np.sqrt(2)
    d_r = ndi.gaussian_filter(image, s, order=(1, 0), mode="reflect", truncate=TRUNCATE)
    d_c = ndi.gaussian_filter(image, s, order=(0, 1), mode="reflect", truncate=TRUNCATE)
    return (ndi.gaussian_filter(d_r, s, order=(1, 0), mode="reflect", truncate=TRUNCATE),
            ndi.gaussian_filter(d_r, s, order=(0, 1), mode="reflect", truncate=TRUNCATE),
            ndi.gaussian_filter(d_c, s, order=(0, 1), mode="reflect", truncate=TRUNCATE))


def frangi_dark(image: np.ndarray, sigmas: Sequence[float], *, beta: float = 0.5) -> np.ndarray:
    """Frangi vesselness of dark ridges in a 2-D image: the maximum over ``sigmas`` (in [0, 1])."""
    image = np.asarray(image)
    image = image.astype(np.float32 if image.dtype == np.float32 else np.float64, copy=False)
    out = np.zeros_like(image)
    gamma = None
    for sigma in sigmas:
        hrr, hrc, hcc = _hessian(image, sigma)
        eig = np.empty((2, *image.shape), image.dtype)
        eig[:] = (hrr + hcc) / 2
        half = np.sqrt(hrc**2 + ((hrr - hcc) / 2) ** 2)
        eig[0] += half
        eig[1] -= half
        eig = np.take_along_axis(eig, abs(eig).argsort(0), 0)  # by magnitude
        lambda1, lambda2 = eig[0], np.maximum(eig[1], 1e-10)
        r_b = abs(lambda1) / lambda2
        norm = np.sqrt((eig**2).sum(0))
        if gamma is None:  # set at the first scale and kept for the others, as scikit-image does
            gamma = norm.max() / 2 or 1.0
        vals = np.exp(-(r_b**2) / (2 * beta**2), dtype=image.dtype)
        vals *= 1.0 - np.exp(-(norm**2) / (2 * gamma**2), dtype=image.dtype)
        out = np.maximum(out, vals)
    return out
