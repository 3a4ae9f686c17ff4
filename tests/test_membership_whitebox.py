"""White-box membership attacks on real (tiny, briefly trained) diffusers models, checked against diffusers."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from synfundus_guard.audit.membership.run import membership_sets, score_membership
from synfundus_guard.audit.membership.whitebox import (DiffusionTarget, WhiteBoxAttack, WhiteBoxOptions,
                                                       loss_scores, pia_scores, prepare_images, score_images)
from synfundus_guard.data.phantom import generate_phantom
from synfundus_guard.data.split import write_split
from synfundus_guard.errors import InputError
from synfundus_guard.generation.model import build_unet, load_model, save_model, training_scheduler
from synfundus_guard.generation.train import train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wb")
    generate_phantom(root / "all", patients=10, visits=2, size=64, seed=3)
    split = write_split(root / "all", root / "split", holdout_fraction=0.4, seed=0)
    model = root / "model"
    train_model(train_dir=split.train_dir, out_dir=model, steps=12, resolution=16, batch_size=8, channels=(8, 16),
                holdout_fraction=0.2, seed=0)
    return {"root": root, "train": split.train_dir, "holdout": split.holdout_dir, "model": model}


@pytest.fixture(scope="module")
def prepared(data):
    model = load_model(data["model"])
    sets = membership_sets(train_dir=data["train"], holdout_dir=data["holdout"], card=model.card)
    target = DiffusionTarget(model.unet, model.scheduler, device="cpu")
    images = prepare_images(sets.records, resolution=target.resolution, in_channels=3)
    return model, target, images


def unit(images) -> torch.Tensor:
    return images.pixels.float() / 127.5 - 1.0


def test_scores_are_deterministic_and_do_not_depend_on_batching(prepared):
    _, target, images = prepared
    a = score_images(target, images, options=WhiteBoxOptions(batch_size=3))
    b = score_images(target, images, options=WhiteBoxOptions(batch_size=64))
    assert set(a.scores) == {"loss", "pia", "secmi"}
    for name in a.scores:
        assert a.scores[name].shape == (images.pixels.shape[0],)
        np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=2e-4, atol=1e-9)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def any_objective(request, prepared, tmp_path_factory):
    """A real (untrained) UNet under each training objective, with the prepared images."""
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type=request.param)
    save_model(build_unet(resolution=16, block_out_channels=(8, 16)), scheduler, folder, conditional=False)
    model = load_model(folder)
    return model, DiffusionTarget(model.unet, model.scheduler, device="cpu"), unit(prepared[2])[:4]


def test_loss_attack_matches_diffusers_add_noise_and_velocity(any_objective):
    model, target, x0 = any_objective
    noise = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    ddpm = DDPMScheduler.from_config(model.scheduler.config)
    t = target.timestep(100)
    steps = torch.full((4,), t)
    expected = []
    with torch.inference_mode():
        for k in range(2):
            eps = noise[k].expand_as(x0)
            out = model.unet(ddpm.add_noise(x0, eps, steps), t).sample
            if ddpm.config.prediction_type == "epsilon":
                expected.append(((out - eps) ** 2).flatten(1).mean(1))
            else:  # eps_hat - eps = sqrt(abar) (v_hat - v): the same loss, in noise units
                v = ddpm.get_velocity(x0, eps, steps)
                expected.append(ddpm.alphas_cumprod[t] * ((out - v) ** 2).flatten(1).mean(1))
        got = loss_scores(target, x0, None, t=t, noise=noise)
    torch.testing.assert_close(got, -torch.stack(expected).mean(0), rtol=1e-4, atol=1e-6)


def test_pia_uses_the_models_own_noise_at_t0(any_objective):
    model, target, x0 = any_objective
    abar = model.scheduler.alphas_cumprod

    def eps(x, t):  # diffusers' pred_epsilon for each objective
        out = model.unet(x, t).sample
        if model.scheduler.config.prediction_type == "epsilon":
            return out
        return abar[t].sqrt() * out + (1 - abar[t]).sqrt() * x

    with torch.inference_mode():
        eps0 = eps(x0, 0)
        eps_t = eps(abar[200].sqrt() * x0 + (1 - abar[200]).sqrt() * eps0, 200)
        got = pia_scores(target, x0, None, t=200, p=4.0)
    torch.testing.assert_close(got, -((eps_t - eps0).abs() ** 4).flatten(1).mean(1))


def test_ddim_steps_match_diffusers_ddim_scheduler(any_objective):
    model, target, x = any_objective
    ddim = DDIMScheduler.from_config(model.scheduler.config, clip_sample=False, timestep_spacing="leading",
                                     set_alpha_to_one=False)
    ddim.set_timesteps(100)  # step ratio 10: from 100 the scheduler steps to 90, as SecMI's denoising step
    with torch.inference_mode():
        out = model.unet(x, 100).sample
        expected = ddim.step(out, 100, x, eta=0.0).prev_sample
        torch.testing.assert_close(target.ddim_step(x, 100, 90, None), expected, rtol=1e-4, atol=1e-5)


def test_queries_per_image_are_as_documented(prepared):
    _, target, images = prepared
    calls: list[int] = []
    hook = target.unet.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        opts = WhiteBoxOptions(batch_size=64)
        for attack in WhiteBoxAttack:
            calls.clear()
            score_images(target, images, options=WhiteBoxOptions(attacks=(attack,), batch_size=64))
            assert sum(calls) == opts.queries(attack) * images.pixels.shape[0], attack
    finally:
        hook.remove()
    assert opts.queries(WhiteBoxAttack.SECMI) == 11 and opts.queries(WhiteBoxAttack.PIA) == 2


def test_members_come_from_the_training_card(data, prepared):
    model, _, _ = prepared
    sets = membership_sets(train_dir=data["train"], holdout_dir=data["holdout"], card=model.card)
    assert {r.file_name for r in sets.members} == set(model.card.data.train_files)
    held = set(model.card.data.holdout_files)
    assert held and held <= {r.file_name for r in sets.nonmembers}


def test_images_smaller_than_the_model_are_refused(data, tmp_path):
    big = tmp_path / "big"
    save_model(build_unet(resolution=128, block_out_channels=(8, 16)), training_scheduler(), big, conditional=False)
    with pytest.raises(InputError, match=r"20 image\(s\) are smaller than the model's 128x128 input \(e.g. .*64x64"):
        score_membership(train_dir=data["train"], holdout_dir=data["holdout"], model_dir=big)


def test_conditional_model_is_queried_with_each_images_labels(data, tmp_path):
    model_dir = tmp_path / "cond"
    train_model(train_dir=data["train"], out_dir=model_dir, steps=2, resolution=16, batch_size=8, channels=(8, 16),
                holdout_fraction=0.2, condition_on=("dr_grade",))
    model = load_model(model_dir)
    full = membership_sets(train_dir=data["train"], holdout_dir=data["holdout"], card=model.card)
    # Holdout images with a grade the training set never had cannot be queried with their own label: left out,
    # with a note. A training image whose labels no longer match the card is an error.
    seen = set(model.conditioning.vocab["dr_grade"])
    unseen = sum(r.labels["dr_grade"] not in seen for r in full.nonmembers)
    scores = score_membership(train_dir=data["train"], holdout_dir=data["holdout"], model_dir=model_dir,
                              whitebox=WhiteBoxOptions(attacks=(WhiteBoxAttack.PIA,)))
    assert np.isfinite(scores.scores["pia"]).all()
    assert len(scores.sets.nonmembers) == len(full.nonmembers) - unseen
    assert (unseen > 0) == any("never conditioned on" in n for n in scores.notes)
    records = scores.sets.records
    images = prepare_images(records, resolution=16, in_channels=3, conditioning=model.conditioning)
    expected = [model.conditioning.class_index({"dr_grade": r.labels["dr_grade"]}) for r in records]
    assert images.labels.tolist() == expected
    if unseen:  # prepare_images itself refuses them (the guard behind the filter)
        with pytest.raises(InputError, match=rf"{unseen} image\(s\) lack a label value the model was conditioned"):
            prepare_images(full.records, resolution=16, in_channels=3, conditioning=model.conditioning)
    train = tmp_path / "train"
    shutil.copytree(data["train"], train)
    rows = list(csv.DictReader(open(train / "labels.csv", newline="")))
    member = next(r for r in rows if r["file_name"] in model.card.data.train_files)
    member["dr_grade"] = "9"
    with open(train / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(InputError, match=r"1 training image\(s\) lack the label values \(dr_grade\)"):
        score_membership(train_dir=train, holdout_dir=data["holdout"], model_dir=model_dir)
