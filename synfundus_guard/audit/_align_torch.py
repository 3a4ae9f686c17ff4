"""The alignment's correlation windows on a torch device (a GPU): warps, spectra and windows of many views at once.

:meth:`~.pixel_match.QuerySketch.score_many` computes, for every searched view of a query (orientation, rotation,
scale), the normalised cross-correlation with a training sketch at every shift within ``max_shift``. On a CPU that
is one OpenCV warp, one FFT and two small matrix products per view, about 0.1 ms each, a few hundred per audited
image. Here all views of a call are sampled in one ``grid_sample`` (orientation, rotation and scale folded into
one affine map per view), tapered, normalised and transformed in one batched FFT, and their windows computed by
the same two matrix products, batched: the work a GPU does well. Only the windows (``(n, 2m+1, 2m+1)``) return to
the host; peak finding stays in :mod:`.pixel_match`, shared by both paths.

The samples differ from OpenCV's by its fixed-point placement (OpenCV puts bilinear samples on a 1/32-pixel grid;
``grid_sample`` at the exact positions), so scores differ from the CPU path's by rounding-sized amounts: within
:data:`TOLERANCE` on the test's images (``tests/test_align_torch.py``). Vessel maps, band-passes, embeddings and
the other checks stay on the CPU.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

TOLERANCE = 5e-3
"""Largest difference between a score of this path and the CPU path's that the tests accept (measured: see the
test module)."""


def resolve_device(device: str | None) -> str | None:
    """The torch device the alignment runs on: ``None`` for the CPU path (``None``, ``"cpu"``), the device for
    ``"cuda"``/``"cuda:N"``, and for ``"auto"`` CUDA where torch sees a GPU, else the CPU path. Raises
    :class:`~..errors.InputError` for an unknown name or CUDA without a GPU."""
    from ..errors import InputError

    if device in (None, "cpu"):
        return None
    if device == "torch-cpu":  # the torch path on the CPU: how the tests compare it with the numpy path
        return "cpu"
    card = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if device == "auto" or card:
        import torch

        if torch.cuda.is_available():
            if card and card.group(1) is not None and int(card.group(1)) >= torch.cuda.device_count():
                raise InputError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                                 f"numbered from 0")
            return "cuda" if device == "auto" else str(device)
        if device == "auto":
            return None
        raise InputError(f"--device {device}: torch sees no CUDA GPU on this machine (use --device cpu or auto)")
    raise InputError(f"unknown device {device!r} (use cpu, cuda, cuda:N, auto or torch-cpu)")


def device_fingerprint(device: str | None) -> dict[str, str]:
    """What a check's fingerprint adds for its alignment device: nothing on the CPU path (fingerprints of
    audits before this module are unchanged), ``{"align_device": "cuda"}`` (the kind, not the card) otherwise:
    scores differ from the CPU path's by rounding, so a journal of one path is not resumed by the other."""
    return {} if device is None else {"align_device": str(device).split(":")[0]}


def _orientation_matrix(orientation: int) -> np.ndarray:
    """The linear map from centred (row, col) coordinates of an oriented image to those of the image itself, for
    :func:`~..data.fov.orient` (mirror left-right when ``orientation >= 4``, then quarter turns)."""
    turn = np.array([[0.0, 1.0], [-1.0, 0.0]])  # np.rot90 once: out[i, j] = in[j, S-1-i]
    mirror = np.diag([1.0, -1.0]) if orientation >= 4 else np.eye(2)
    return mirror @ np.linalg.matrix_power(turn, orientation % 4)


def _sampling_matrix(orientation: int, angle: float, scale: float) -> np.ndarray:
    """The 2x2 map from an output view's centred (row, col) to the base image's, for :func:`~..data.fov.orient`
    then :func:`~..data.fov.rotate_scale`."""
    th = np.deg2rad(angle)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) / scale
    return _orientation_matrix(orientation) @ rot


@lru_cache(maxsize=4)
def _grid_and_taper(device: str, side: int, is_disc: bool) -> tuple[Any, Any]:
    """Device copies of the base sampling grid (centred (row, col), normalised as ``grid_sample`` reads them) and
    of the taper."""
    import torch

    from .pixel_match import _FULL_TAPER, _TAPER

    c = (side - 1) / 2
    u = (torch.arange(side, dtype=torch.float64) - c) / c
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1)  # (S, S, 2)
    return grid.to(device), torch.from_numpy(_TAPER if is_disc else _FULL_TAPER).to(device)


@lru_cache(maxsize=4)
def _window_matrices(device: str, m: int) -> tuple[Any, Any]:
    """Device copies of :func:`~.pixel_match._window_dft`'s matrices."""
    import torch

    from .pixel_match import _window_dft

    rows, cols = _window_dft(m)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def view_spectra(base: np.ndarray, is_disc: bool, keys: Sequence[tuple[int, float, float]], device: str) -> Any:
    """Tapered, zero-mean, unit-norm half-spectra ``(n, S, S//2+1)`` (complex64, on ``device``) of the views
    ``(orientation, angle, scale)`` of ``base``: :func:`~.pixel_match._tapered_spectra` of the warped views."""
    import torch

    side = base.shape[0]
    grid, taper = _grid_and_taper(device, side, is_disc)
    maps = torch.from_numpy(np.stack([_sampling_matrix(*k) for k in keys])).to(device)  # (n, 2, 2)
    at = torch.einsum("nab,ijb->nija", maps, grid)  # (n, S, S, 2) base (row, col), normalised
    img = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32)).to(device)
    warped = torch.nn.functional.grid_sample(img.expand(len(keys), 1, side, side), at.flip(-1).float(),
                                             mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    tapered = warped * taper
    total = tapered.sum(dim=(1, 2), dtype=torch.float64)
    energy = tapered.square().sum(dim=(1, 2), dtype=torch.float64) - total**2 / (side * side)
    spec = torch.fft.rfft2(tapered)
    spec[:, 0, 0] = 0
    return spec * (1.0 / energy.clamp(min=0).sqrt().clamp(min=1e-9)).float()[:, None, None]


def windows(spectra: Any, tspec: np.ndarray, which: np.ndarray, m: int) -> np.ndarray:
    """Correlation windows ``(n, 2m+1, 2m+1)`` (float32, on the host) of view spectra ``(n, S, K)`` (on their
    device) with the training spectra ``tspec[which]`` (:func:`~.pixel_match.sketch_spectra`)."""
    import torch

    device = spectra.device
    rows, cols = _window_matrices(str(device), m)
    t = torch.from_numpy(np.ascontiguousarray(tspec)).to(device)[torch.from_numpy(which).to(device)]
    return torch.matmul(torch.matmul(rows, spectra * t), cols).real.float().cpu().numpy()
