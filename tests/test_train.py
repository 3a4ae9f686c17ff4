"""Training: a tiny real diffusers UNet on phantom data, saved for plain diffusers, with card and resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from synfundus_guard.errors import InputError, ModelError
from synfundus_guard.generation.card import CARD_FILE, data_fingerprint, read_card
from synfundus_guard.generation.default import RECIPE_FILE, training_data_dir
from synfundus_guard.generation.model import DEFAULT_MODEL_DIR, load_model, model_fingerprint
from synfundus_guard.generation.train import CHECKPOINT, train_model
from synfundus_guard.progress import Progress, ProgressTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(steps=4, resolution=16, batch_size=4, channels=(16, 32), seed=3, checkpoint_every=2)



def _patients(folder: Path) -> dict[str, str]:
    with open(folder / "labels.csv", newline="") as fh:
        return {row["file_name"]: row["patient_id"] for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def tiny_model(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "model"
    train_model(train_dir=phantom_dir, out_dir=out, **TINY)
    return out


def test_saved_model_loads_with_plain_diffusers(tiny_model: Path) -> None:
    unet = UNet2DModel.from_pretrained(tiny_model / "unet")
    assert unet.config.sample_size == 16 and tuple(unet.config.block_out_channels) == (16, 32)
    for cls in (DDPMPipeline, DDIMPipeline):
        pipe = cls.from_pretrained(tiny_model)
        images = pipe(batch_size=1, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    assert not (tiny_model / CHECKPOINT.parent).exists(), "checkpoints are removed once the model is saved"


def test_card_records_split_fingerprint_and_settings(tiny_model: Path, phantom_dir: Path) -> None:
    card = read_card(tiny_model)
    assert card is not None
    assert (card.steps, card.resolution, card.batch_size, card.seed) == (4, 16, 4, 3)
    assert card.dp is None and card.conditioning is None
    patients = _patients(phantom_dir)
    train_p = {patients[f] for f in card.data.train_files}
    hold_p = {patients[f] for f in card.data.holdout_files}
    assert train_p and hold_p and not train_p & hold_p, "the split must be patient-disjoint"
    assert sorted(card.data.train_files + card.data.holdout_files) == sorted(patients)
    assert (card.data.train_patients, card.data.holdout_patients) == (len(train_p), len(hold_p))
    assert card.data.fingerprint == data_fingerprint([(f, phantom_dir / f) for f in card.data.train_files])
    assert Path(card.data.train_dir) == phantom_dir.resolve()
    raw = json.loads((tiny_model / CARD_FILE).read_text())
    assert raw["schema"].startswith("synfundus-guard/training-card/")
    loaded = load_model(tiny_model)
    assert loaded.fingerprint == model_fingerprint(tiny_model) and len(loaded.fingerprint) == 64
    assert "train_files" not in json.dumps(loaded.public_info())


class _KillAfter(Progress):
    """Progress observer that interrupts training after ``n`` steps (like Ctrl-C or a kill)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        outer = self

        class _Task(ProgressTask):
            done = -1

            def advance(self, k: int = 1) -> None:
                self.done += k if self.done >= 0 else 1  # the first call reports the resume point
                if description.startswith("Training") and self.done >= outer.n:
                    raise KeyboardInterrupt

        return _Task()


def test_resume_after_interrupt_matches_uninterrupted(phantom_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train_model(train_dir=phantom_dir, out_dir=out, progress=_KillAfter(3), **TINY)
    assert (out / CHECKPOINT).is_file() and not (out / CARD_FILE).exists()
    assert _mode(out / CHECKPOINT) == 0o600 and _mode(out / CHECKPOINT.parent) == 0o700, "checkpoints are private"
    result = train_model(train_dir=phantom_dir, out_dir=out, **TINY)
    assert result.resumed_from == 2 and result.steps_run == 2
    assert model_fingerprint(out) == model_fingerprint(tiny_model), "resumed weights differ from an uninterrupted run"
    again = train_model(train_dir=phantom_dir, out_dir=out, **TINY)
    assert again.steps_run == 0, "a finished model is not retrained"


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_training_card_is_private_and_the_rest_is_not(tiny_model: Path) -> None:
    assert _mode(tiny_model / CARD_FILE) == 0o600, "the card names every training file"
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(tiny_model / "unet" / "config.json") == 0o666 & ~umask


def _break_unet(state: dict) -> None:
    state["unet"].pop(next(iter(state["unet"])))


def _break_ema(state: dict) -> None:
    state["ema"][next(iter(state["ema"]))] = torch.zeros(1)


@pytest.mark.parametrize(("breaks", "word"), [
    (_break_unet, "does not fit this model"),
    (_break_ema, "does not fit this model"),
    (lambda state: state.update(loss="low"), "does not fit this model"),
    (lambda state: state.update(step=99), "checkpoint at step 99 of a 4-step run"),
    (lambda state: state.pop("optimizer"), "missing or malformed: optimizer"),
], ids=["unet-keys", "ema-shape", "loss-type", "step-beyond-end", "no-optimizer"])
def test_checkpoint_that_does_not_fit_is_refused(phantom_dir: Path, tmp_path: Path, breaks, word: str) -> None:
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train_model(train_dir=phantom_dir, out_dir=out, progress=_KillAfter(3), **TINY)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    breaks(state)
    torch.save(state, out / CHECKPOINT)
    before = (out / CHECKPOINT).read_bytes()
    args = ["train", str(phantom_dir), "--out", str(out), "--steps", "4", "--resolution", "16", "--batch-size", "4",
            "--channels", "16,32", "--seed", "3", "--checkpoint-every", "2"]  # the arguments of TINY
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]  # after the loading bar
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr
    assert word in errors[0] and "delete it to start over" in errors[0] and "Traceback" not in res.output
    assert (out / CHECKPOINT).read_bytes() == before and not (out / CARD_FILE).exists()


def test_out_dir_holding_another_run_is_refused(phantom_dir: Path, tiny_model: Path) -> None:
    with pytest.raises(InputError, match="other arguments"):
        train_model(train_dir=phantom_dir, out_dir=tiny_model, **{**TINY, "steps": 5})


@pytest.mark.parametrize("bad, match", [
    ({"steps": 0}, "steps"), ({"resolution": 15}, "resolution"), ({"batch_size": 0}, "batch size"),
    ({"holdout_fraction": 0.0}, "holdout"), ({"channels": (12, 32)}, "channels"), ({"lr": -1.0}, "learning rate"),
])
def test_bad_arguments(phantom_dir: Path, tmp_path: Path, bad: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        train_model(train_dir=phantom_dir, out_dir=tmp_path / "m", **{**TINY, **bad})


def test_conditioning_on_a_missing_column_is_refused(phantom_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no_such_column"):
        train_model(train_dir=phantom_dir, out_dir=tmp_path / "m", condition_on=("dr_grade", "no_such_column"), **TINY)


def test_cli_train_conditional(phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = ["train", str(phantom_dir), "--out", str(out), "--steps", "2", "--resolution", "16", "--batch-size", "4",
            "--channels", "16,32", "--condition-on", "dr_grade,amd"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.stdout
    card = read_card(out)
    assert card.conditioning["columns"] == ["dr_grade", "amd"]
    assert card.conditioning["vocab"]["amd"] == sorted({"0", "1"} & set(card.conditioning["vocab"]["amd"]))
    unet = UNet2DModel.from_pretrained(out / "unet")
    n_classes = len(card.conditioning["vocab"]["dr_grade"]) * len(card.conditioning["vocab"]["amd"])
    assert unet.config.num_class_embeds == n_classes
    assert not (out / "model_index.json").exists(), "a conditional model is not an unconditional pipeline"


@pytest.mark.parametrize("args, match", [
    (["--target-epsilon", "3"], "need --dp"),
    (["--dp", "--target-epsilon", "3", "--noise-multiplier", "1"], "not both"),
    (["--steps", "0"], "steps"),
    (["--channels", "a,b"], "channels"),
    (["--device", "tpu"], "--device must be one of"),
])
def test_cli_train_usage_errors_are_one_line(phantom_dir: Path, tmp_path: Path, args: list[str], match: str) -> None:
    res = CliRunner().invoke(app, ["train", str(phantom_dir), "--out", str(tmp_path / "m"), *args])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_one_line_error_before_anything_is_written(phantom_dir: Path,
                                                                            tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", str(phantom_dir), "--out", str(tmp_path / "m"), "--device", "cuda"])
    assert res.exit_code == 2 and not (tmp_path / "m").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], res.stderr
    res = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert res.exit_code == 2 and not (tmp_path / "r").exists() and "no CUDA GPU" in res.stderr


def test_device_auto_trains_where_torch_sees_a_device_and_checkpoints_are_portable(phantom_dir: Path,
                                                                                  tiny_model: Path,
                                                                                  tmp_path: Path) -> None:
    """``--device auto`` picks the GPU when there is one; on a CPU-only machine it is the CPU run, bit for bit.
    A checkpoint holds CPU tensors whatever the device, so a run can resume on another machine."""
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train_model(train_dir=phantom_dir, out_dir=out, progress=_KillAfter(3), device="auto", **TINY)
    state = torch.load(out / CHECKPOINT, weights_only=True)  # tensors come back on the device they were saved from
    tensors = [*state["unet"].values(), *state["ema"].values(), state["generator"]]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    train_model(train_dir=phantom_dir, out_dir=out, device="cpu", **TINY)
    if not torch.cuda.is_available():
        assert model_fingerprint(out) == model_fingerprint(tiny_model)


def test_cli_train_missing_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "not found" in res.stderr


class _Log(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_training_data_is_found_or_regenerated_from_the_recipe(tiny_model: Path, phantom_dir: Path,
                                                               tmp_path: Path) -> None:
    model = load_model(tiny_model)
    assert training_data_dir(model, cache_dir=tmp_path) == phantom_dir.resolve()
    moved = tmp_path / "model"
    shutil.copytree(tiny_model, moved)
    card = json.loads((moved / CARD_FILE).read_text())
    card["data"]["train_dir"] = str(tmp_path / "gone")
    (moved / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not found"):
        training_data_dir(load_model(moved), cache_dir=tmp_path)
    # conftest's phantom_dir is generate_phantom(patients=6, visits=2, size=64, seed=1): a recipe regenerates it
    (moved / RECIPE_FILE).write_text(json.dumps({"phantom": {"patients": 6, "visits": 2, "size": 64, "seed": 1}}))
    log = _Log()
    found = training_data_dir(load_model(moved), cache_dir=tmp_path / "cache", progress=log)
    assert found.is_relative_to(tmp_path / "cache") and (found / card["data"]["train_files"][0]).is_file()
    assert not any("differ" in line for line in log.lines), "regenerated phantom must be byte-identical"
    assert training_data_dir(load_model(moved), cache_dir=tmp_path / "cache") == found


def test_builtin_model_training_data_regenerates_byte_identical(tmp_path: Path) -> None:
    """The shipped weights were trained on exactly what the recipe regenerates today (else: retrain them with
    ``build_default_model``), so audits of its releases index and calibrate on its true training data."""
    moved = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, moved)
    card = json.loads((moved / CARD_FILE).read_text())
    card["data"]["train_dir"] = str(tmp_path / "not-here")  # force the regeneration a fresh machine does
    (moved / CARD_FILE).write_text(json.dumps(card))
    log = _Log()
    data = training_data_dir(load_model(moved), cache_dir=tmp_path / "cache", progress=log)
    assert not any("differ" in line for line in log.lines)
    names = card["data"]["train_files"]
    assert data_fingerprint([(n, data / n) for n in names]) == card["data"]["fingerprint"]
