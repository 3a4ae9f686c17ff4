"""DP training through real Opacus: the card's ε is what Opacus' accountant computes for the same parameters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from synfundus_guard.errors import InputError
from synfundus_guard.generation.card import read_card
from synfundus_guard.generation.dp import DPConfig
from synfundus_guard.generation.model import load_model, model_fingerprint
from synfundus_guard.generation.train import train_model
from tests.test_train import _KillAfter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(steps=5, resolution=16, batch_size=4, channels=(16, 32), seed=5, checkpoint_every=2)



def _opacus_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    acc = RDPAccountant()
    acc.history = [(noise, sample_rate, steps)]
    return acc.get_epsilon(delta=delta)


@pytest.fixture(scope="module")
def dp_model(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp") / "model"
    train_model(train_dir=phantom_dir, out_dir=out, dp=DPConfig(target_epsilon=6.0, delta=1e-5, max_grad_norm=1.0),
                **TINY)
    return out


def test_target_epsilon_card_matches_opacus_accountant(dp_model: Path) -> None:
    card = read_card(dp_model)
    dp = card.dp
    n_train = len(card.data.train_files)
    assert dp.sample_rate == pytest.approx(1 / math.ceil(n_train / TINY["batch_size"]))
    assert dp.steps == 5 and dp.delta == 1e-5 and dp.max_grad_norm == 1.0 and dp.target_epsilon == 6.0
    assert dp.accountant == "rdp" and dp.poisson_sampling
    sigma = get_noise_multiplier(target_epsilon=6.0, target_delta=1e-5, sample_rate=dp.sample_rate, steps=5,
                                 accountant="rdp")
    assert dp.noise_multiplier == sigma
    assert dp.epsilon == pytest.approx(_opacus_epsilon(sigma, dp.sample_rate, 5, 1e-5), rel=1e-12)
    assert dp.epsilon <= 6.0 + 0.01  # get_noise_multiplier's tolerance
    info = load_model(dp_model).public_info()
    assert info["dp"] is True and info["epsilon"] == dp.epsilon and info["delta"] == 1e-5


def test_noise_multiplier_card_matches_opacus_accountant(phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    res = train_model(train_dir=phantom_dir, out_dir=out, dp=DPConfig(target_epsilon=None, noise_multiplier=1.3,
                                                                      delta=1e-6, max_grad_norm=0.5), **TINY)
    dp = res.card.dp
    assert dp.noise_multiplier == 1.3 and dp.target_epsilon is None
    assert res.epsilon == pytest.approx(_opacus_epsilon(1.3, dp.sample_rate, 5, 1e-6), rel=1e-12)


def test_dp_resume_restores_weights_and_accountant(phantom_dir: Path, dp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    cfg = DPConfig(target_epsilon=6.0, delta=1e-5, max_grad_norm=1.0)
    with pytest.raises(KeyboardInterrupt):
        train_model(train_dir=phantom_dir, out_dir=out, dp=cfg, progress=_KillAfter(3), **TINY)
    res = train_model(train_dir=phantom_dir, out_dir=out, dp=cfg, **TINY)
    assert res.resumed_from == 2
    assert res.card.dp == read_card(dp_model).dp, "the accountant must count the steps before the interruption"
    assert model_fingerprint(out) == model_fingerprint(dp_model)


@pytest.mark.parametrize("cfg, match", [
    (DPConfig(target_epsilon=None, noise_multiplier=None), "exactly one"),
    (DPConfig(target_epsilon=-1.0), "target epsilon"),
    (DPConfig(delta=1.0), "delta"),
    (DPConfig(max_grad_norm=0.0), "max grad norm"),
])
def test_invalid_dp_settings(phantom_dir: Path, tmp_path: Path, cfg: DPConfig, match: str) -> None:
    with pytest.raises(InputError, match=match):
        train_model(train_dir=phantom_dir, out_dir=tmp_path / "m", dp=cfg, **TINY)
