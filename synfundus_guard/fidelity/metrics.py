"""Fidelity and utility metrics of a synthetic release, computed on feature vectors (N x D arrays), no I/O.

* **FD** (Fréchet distance, FID on Inception features): the formula of torchmetrics and clean-fid from float64
  means and unbiased (n - 1) covariances. ``Tr sqrt(S1 S2)`` is taken as torchmetrics does, the sum of the
  square roots of the eigenvalues of ``S1 @ S2`` (real and >= 0 in exact arithmetic, as S1 S2 is similar to the
  PSD ``S1^1/2 S2 S1^1/2``): one eigen-decomposition, no iteration, and no failure or "imaginary component" on
  the rank-deficient covariances of n < D samples where ``scipy.linalg.sqrtm`` (clean-fid) needs an epsilon
  retry. Rounding noise (tiny negative or complex eigenvalues) contributes only its principal root's real part.
* **KD** (KID): torchmetrics' unbiased MMD^2 with the cubic polynomial kernel ``(x.y / D + 1)^3``, mean and
  population std over random subsets. Subset-based by definition, so a seed changes it slightly.
* **precision, recall, density, coverage**: Naeem et al. 2020, as ``prdc.compute_prdc`` (strict ``<`` against
  k-NN radii that count the point itself), with exact FAISS searches (:mod:`._knn`) instead of an N x M matrix.
* **authenticity**: Alaa et al. 2022. A synthetic sample is unauthentic when its nearest training sample i is
  at least as close to it as i is to its own nearest other training sample (ties count as copies: an exact copy
  of an image present twice in the training set has both distances 0). Returns the authentic fraction.

Bootstrap (:func:`fidelity_metrics`): real and fake indices are resampled separately (95 % percentile
intervals). FD uses the exact covariance of each resample. PRDC and authenticity are means of per-sample
flags against k-NN balls of the *other* set; they resample those flags (precision, density, authenticity: the
fakes; recall, coverage: the reals) and keep the balls fixed. That reuse is exact for the resampled side and
costs nothing; resampling the ball side as well would put duplicate points into the k-NN radii (zero-radius
balls), which biases these metrics, and would cost a full k-NN search per replicate. The intervals therefore
show sampling noise of the evaluated set, not of the reference manifold. KD, the costliest, uses the first
``KD_BOOT_REPS`` replicates with 10 subsets each (the point: 100 of up to 1000 samples) and leaves out pairs of
copies of one sample, which would otherwise bias the unbiased MMD^2 upwards. FD's small-sample bias grows on a
resample (about 63 % distinct samples), so at small n its percentile interval may lie above the point
estimate: every interval is widened to include its point (:func:`_interval`).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..intervals import interval
from ..progress import NULL_PROGRESS, Progress
from ._knn import ball_counts, kth_radius, knn

METRIC_DIRECTIONS = {"fd": False, "kd": False, "precision": True, "recall": True, "density": True,
                     "coverage": True, "authenticity": True}
"""``higher_is_better`` of each metric key (density may exceed 1; values near 1 match the real density)."""
KD_BOOT_REPS = 50
FD_MIN_SAMPLES = 1000


def _features(name: str, x: object, *, min_rows: int = 2) -> np.ndarray:
    """A finite 2-D float64 copy of ``x``, or an :class:`InputError` naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name} features must be a numeric N x D array, got shape {arr.shape} ({arr.dtype})")
    if len(arr) < min_rows:
        raise InputError(f"{name} features need at least {min_rows} samples, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} features contain NaN or infinite values")
    return arr.astype(np.float64)


def _validated(min_rows: int = 2, **named: object) -> list[np.ndarray]:
    """Validated float64 arrays of one width, in the order given."""
    arrays = [_features(name, x, min_rows=min_rows) for name, x in named.items()]
    (first, a0), *rest = zip(named, arrays)
    for name, a in rest:
        if a.shape[1] != a0.shape[1]:
            raise InputError(f"{first} and {name} features differ in dimension: {a0.shape[1]} vs {a.shape[1]}")
    return arrays


def _centred(*arrays: np.ndarray) -> list[np.ndarray]:
    """Shifted by the first one's mean: distances do not change and float32 search loses fewer digits."""
    mean = arrays[0].mean(axis=0)
    return [a - mean for a in arrays]


def _fd_moments(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    diff = mu1 - mu2
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real.sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def _moments(x: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``x``, or of the resample holding ``counts[i]`` copies of row i."""
    w = np.ones(len(x)) if counts is None else counts.astype(np.float64)
    mu = w @ x / w.sum()
    xc = x - mu
    return mu, (xc * w[:, None]).T @ xc / (w.sum() - 1.0)


def frechet_distance(real: object, fake: object) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on Inception features). Lower is better."""
    r, f = _validated(real=real, fake=fake)
    return _fd_moments(*_moments(r), *_moments(f))


def _mmd(x: np.ndarray, y: np.ndarray, sx: np.ndarray | None = None, sy: np.ndarray | None = None) -> float:
    """Unbiased MMD^2, cubic kernel. ``sx``/``sy``: source sample of each row; pairs of copies are left out."""
    gamma = 1.0 / x.shape[1]

    def kernel_sum(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
        k = a @ b.T
        k *= gamma
        k += 1.0
        cube = k * k
        cube *= k  # in place: this loop is KD's whole cost
        return float(cube.sum()), np.diag(cube) if a is b else np.empty(0)

    def within(a: np.ndarray, src: np.ndarray | None) -> float:
        total, diag = kernel_sum(a, a)
        copies = np.ones(len(a))
        if src is not None:
            _, inverse, counts = np.unique(src, return_inverse=True, return_counts=True)
            copies = counts[inverse].astype(np.float64)
        pairs = len(a) ** 2 - copies.sum()  # 0 only if a tiny resample drew one sample m times
        return (total - float(diag @ copies)) / pairs if pairs else np.nan

    cross, _ = kernel_sum(x, y)
    return within(x, sx) + within(y, sy) - 2.0 * cross / (len(x) * len(y))


def poly_mmd(real: object, fake: object) -> float:
    """One KID subset: unbiased MMD^2 with ``k(x, y) = (x.y / D + 1)^3``, as ``torchmetrics.image.kid.poly_mmd``."""
    r, f = _validated(real=real, fake=fake)
    return _mmd(r, f)


def _kd_scores(r, f, *, subsets: int, m: int, rng: np.random.Generator, ir=None, jf=None) -> np.ndarray:
    """MMD^2 of ``subsets`` random m-subsets (of the resamples ``ir``/``jf`` when given, else of all rows)."""
    ir = np.arange(len(r)) if ir is None else ir
    jf = np.arange(len(f)) if jf is None else jf
    out = np.empty(subsets)
    for s in range(subsets):
        sr, sf = ir[rng.choice(len(ir), m, replace=False)], jf[rng.choice(len(jf), m, replace=False)]
        out[s] = _mmd(r[sr], f[sf], sr, sf)
    return out


def kernel_distance(real: object, fake: object, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: (mean, population std) of MMD^2 over random subsets, as torchmetrics. Lower is better.

    ``subset_size`` is capped at the smaller set (torchmetrics raises instead); the draw is seeded.
    """
    r, f = _validated(real=real, fake=fake)
    if subsets < 1 or subset_size < 2:
        raise InputError(f"KD needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    scores = _kd_scores(r, f, subsets=subsets, m=min(subset_size, len(r), len(f)), rng=np.random.default_rng(seed))
    return float(scores.mean()), float(scores.std())


def _prdc_flags(r: np.ndarray, f: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-fake precision flags and density counts / k, per-real recall and coverage flags."""
    real_radii, fake_radii = kth_radius(r, k), kth_radius(f, k)
    # coverage: "the nearest fake is inside real ball i" = "some fake is inside ball i", found by the same search
    in_real_balls, covered = ball_counts(r, real_radii, f)
    return {"precision": (in_real_balls > 0).astype(np.float64), "density": in_real_balls / float(k),
            "recall": (ball_counts(f, fake_radii, r, any_only=True)[0] > 0).astype(np.float64),
            "coverage": covered.astype(np.float64)}


def prdc(real: object, fake: object, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) exactly as ``prdc.compute_prdc``. Higher is better."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    r, f = _centred(*_validated(k + 1, real=real, fake=fake))
    return {name: float(v.mean()) for name, v in _prdc_flags(r, f, k).items()}


def _authentic_flags(t: np.ndarray, f: np.ndarray) -> np.ndarray:
    own_gap = knn(t, t, 2)[0][:, 1]
    dist, idx = knn(t, f, 1)
    return (dist[:, 0] > own_gap[idx[:, 0]]).astype(np.float64)


def authenticity(train: object, fake: object) -> float:
    """Fraction of synthetic samples that are authentic (Alaa et al. 2022), not copies of a training sample."""
    t, f = _centred(*_validated(1, train=train, fake=fake))
    if len(t) < 2:
        raise InputError("train features need at least 2 samples (a nearest *other* training sample)")
    return float(_authentic_flags(t, f).mean())


def _ci(point: float, reps: list[float]) -> dict[str, float | None]:
    return interval(point, reps, digits=None)  # widened to include the point: see synfundus_guard.intervals


def _warnings(n_real: int, n_fake: int, dim: int, m: int) -> list[str]:
    out, n, need = [], min(n_real, n_fake), max(2 * dim, FD_MIN_SAMPLES)
    if n < need:
        out.append(f"FD from only {n} samples per set in {dim} dimensions is inflated by small-sample bias "
                   f"(it shrinks roughly like 1/n); it is meaningful from about {need} samples per set (the larger "
                   f"of 2 x dim and {FD_MIN_SAMPLES}). Compare FD only at equal n; KD is unbiased.")
    if m < 1000:
        out.append(f"KD subsets hold {m} samples instead of 1000 (the smaller set); compare KD only at equal "
                   "subset size.")
    if max(n_real, n_fake) > 1.1 * n:
        out.append(f"real ({n_real}) and fake ({n_fake}) sets differ in size; k-NN radii shrink as n grows, so "
                   "precision, recall, density and coverage are best compared with equal numbers of samples.")
    return out


def fidelity_metrics(real: object, fake: object, *, train: object | None = None, k: int = 5, n_boot: int = 200,
                     seed: int = 0, progress: Progress = NULL_PROGRESS) -> dict:
    """Every metric as ``{"point", "lower", "upper"}`` (95 % bootstrap; None when ``n_boot`` is 0).

    Adds ``n_real``, ``n_fake``, ``dim``, ``warnings`` (plain sentences) and ``higher_is_better`` per metric.
    ``authenticity`` is present only with ``train``. Directions are in :data:`METRIC_DIRECTIONS`; the bootstrap
    is described in the module docstring.
    """
    if k < 1 or n_boot < 0:
        raise InputError(f"k must be >= 1 and n_boot >= 0, got k={k}, n_boot={n_boot}")
    raw_r, raw_f, *rest = _validated(k + 1, real=real, fake=fake, **({} if train is None else {"train": train}))
    r, f, *rest = _centred(raw_r, raw_f, *rest)  # for the distances; KD's kernel is not shift-invariant
    t = rest[0] if rest else None
    rng, m = np.random.default_rng(seed), min(1000, len(r), len(f))
    with progress.task("Fidelity metrics (points)", total=3) as task:
        flags = _prdc_flags(r, f, k)
        if t is not None:
            flags["authenticity"] = _authentic_flags(t, f)
        task.advance()
        kd = _kd_scores(raw_r, raw_f, subsets=100, m=m, rng=rng)
        task.advance()
        reps: dict[str, list[float]] = {name: [] for name in ("fd", "kd", *flags)}
        fd = _fd_moments(*_moments(r), *_moments(f))
        task.advance()
    with progress.task("Fidelity bootstrap", total=n_boot) as task:
        for b in range(n_boot):
            ir, jf = rng.integers(0, len(r), len(r)), rng.integers(0, len(f), len(f))
            cr, cf = np.bincount(ir, minlength=len(r)), np.bincount(jf, minlength=len(f))
            reps["fd"].append(_fd_moments(*_moments(r, cr), *_moments(f, cf)))
            if b < KD_BOOT_REPS:
                reps["kd"].append(float(np.nanmean(_kd_scores(raw_r, raw_f, subsets=10, m=m, rng=rng, ir=ir, jf=jf))))
            for name, v in flags.items():
                reps[name].append(float(v @ (cr if name in ("recall", "coverage") else cf)) / len(v))
            task.advance()
    out: dict = {"fd": _ci(fd, reps["fd"]), "kd": _ci(float(kd.mean()), reps["kd"])}
    out.update({name: _ci(float(v.mean()), reps[name]) for name, v in flags.items()})
    out.update(n_real=len(r), n_fake=len(f), dim=r.shape[1], warnings=_warnings(len(r), len(f), r.shape[1], m),
               higher_is_better={name: METRIC_DIRECTIONS[name] for name in out if name in METRIC_DIRECTIONS})
    return out
