"""The alignment's torch path (``guard audit --device cuda``) against the CPU path, run on the CPU: the same
warps (orientation, rotation and scale as one affine map per view), spectra and correlation windows."""

from __future__ import annotations

import numpy as np
import pytest

from bench import alt_fundus
from synfundus_guard.audit._align_torch import TOLERANCE, device_fingerprint, resolve_device
from synfundus_guard.audit.base import Candidate
from synfundus_guard.audit.pixel_match import COARSE, QuerySketch, make_sketch, sketch_spectra
from synfundus_guard.audit.vessels import REVISIT_GRID
from synfundus_guard.data.fov import orient, rotate_scale
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.errors import InputError
from tests.test_vessels import SEED, SIZE, guard  # noqa: F401 (the module's indexed phantom patients)


def test_device_names() -> None:
    assert resolve_device(None) is None and resolve_device("cpu") is None
    assert resolve_device("torch-cpu") == "cpu"
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto") is None  # no GPU: the CPU path
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    for bad in ("tpu", "cuda:x", "cuda:", "CUDA"):
        with pytest.raises(InputError, match="unknown device"):
            resolve_device(bad)
    assert device_fingerprint(None) == {} and device_fingerprint("cuda:1") == {"align_device": "cuda"}


def test_views_are_the_oriented_rotated_and_scaled_base() -> None:
    """Each view's affine map equals orient then rotate_scale: on a smooth image the torch warp agrees with
    OpenCV's to the latter's 1/32-pixel placement."""
    import torch

    from synfundus_guard.audit import _align_torch as at

    side = 96
    y, x = np.mgrid[:side, :side].astype(np.float32)
    base = (np.sin(x / 7.0) * np.cos(y / 11.0) + 0.3 * np.sin((x + 2 * y) / 13.0)).astype(np.float32)
    keys = [(o, a, s) for o in range(8) for a, s in ((0.0, 1.0), (6.0, 1.0), (-10.0, 1.08), (4.0, 0.9))]
    grid, _ = at._grid_and_taper("cpu", side, True)
    maps = torch.from_numpy(np.stack([at._sampling_matrix(*k) for k in keys]))
    pos = torch.einsum("nab,ijb->nija", maps, grid).flip(-1).float()
    img = torch.from_numpy(base).expand(len(keys), 1, side, side)
    warped = torch.nn.functional.grid_sample(img, pos, mode="bilinear", padding_mode="zeros",
                                             align_corners=True)[:, 0].numpy()
    for (o, a, s), got in zip(keys, warped):
        view = orient(base, o)
        want = view if (a == 0 and s == 1) else rotate_scale(np.ascontiguousarray(view), a, s)
        inner = np.s_[8:-8, 8:-8]  # away from the zero padding at the corners
        assert np.abs(got[inner] - want[inner]).max() < 0.01, (o, a, s)


def test_scores_match_the_cpu_path() -> None:
    """Both kinds of sketch, phantom and second-renderer images (256 and 128 px), the coarse grid and the
    revisit grid, every orientation: scores within TOLERANCE (measured: at most 2.2e-3; 3e-4 on the coarse
    grid), the best transform the same for nearly every pair."""
    train = [render_visit(PhantomPatient.from_seed(3, p), visit=0, size=256, seed=3)[0] for p in range(3)]
    train += [alt_fundus.render(5, p, 0, 128) for p in range(3)]
    queries = [render_visit(PhantomPatient.from_seed(3, p), visit=1, size=256, seed=3)[0] for p in range(2)]
    queries += [alt_fundus.render(5, p, 1, 128) for p in range(2)]
    pairs = [(j, o, a) for j in range(len(train)) for o, a in ((0, 0.0), (5, 6.0), (2, -12.0), (7, 12.0))]
    same = total = 0
    for kind in ("band", "vessel"):
        tspec = sketch_spectra(np.stack([make_sketch(t, kind) for t in train]))
        for img in queries:
            cpu = QuerySketch(img, kind=kind, disc_grid=REVISIT_GRID)
            dev = QuerySketch(img, kind=kind, disc_grid=REVISIT_GRID, device=resolve_device("torch-cpu"))
            assert np.array_equal(cpu.template(), dev.template())
            for grid in (COARSE, None):
                a, b = cpu.score_many(tspec, pairs, grid=grid), dev.score_many(tspec, pairs, grid=grid)
                assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) <= TOLERANCE
                same += sum(x[1] == y[1] for x, y in zip(a, b))
                total += len(pairs)
    assert same >= 0.95 * total


def test_checks_on_the_torch_path_give_the_cpu_verdicts(guard) -> None:  # noqa: F811 (the fixture)
    """The memorization and vessels checks built for a device: same verdicts and nearly the same scores on
    revisits and new patients, and their fingerprints say where they aligned."""
    from synfundus_guard.audit.runner import build_checks
    from synfundus_guard.policies import load_policy

    imgs = [render_visit(PhantomPatient.from_seed(SEED, p), visit=1, size=SIZE, seed=SEED)[0] for p in range(3)]
    imgs += [render_visit(PhantomPatient.from_seed(SEED + 7, p), visit=1, size=SIZE, seed=SEED + 7)[0]
             for p in range(3)]
    batch = [Candidate(f"x{i}.png", im) for i, im in enumerate(imgs)]
    policy = load_policy("public")
    cpu = {c.name: c for c in build_checks(policy=policy, guard=guard)}
    dev = {c.name: c for c in build_checks(policy=policy, guard=guard, device=resolve_device("torch-cpu"))}
    for name in ("memorization", "vessels"):
        assert "align_device" not in cpu[name].fingerprint()
        assert dev[name].fingerprint()["align_device"] == "cpu"
        a, b = cpu[name].check_batch(batch), dev[name].check_batch(batch)
        assert [f.flagged for f in a] == [f.flagged for f in b]
        for x, y in zip(a, b):
            assert x.scores.keys() == y.scores.keys()
            assert all(abs(x.scores[k] - y.scores[k]) <= TOLERANCE for k in x.scores)
    assert [f.flagged for f in cpu["vessels"].check_batch(batch)] == [True] * 3 + [False] * 3
