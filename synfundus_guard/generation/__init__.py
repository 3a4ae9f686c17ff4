"""Generation: train diffusers models (optionally with Opacus DP), load them, and sample through the guard.

Modules (imported on use; torch and diffusers are heavy, so this package imports nothing itself):

* :mod:`.train` — :func:`~.train.train_model` (patient-disjoint holdout, checkpoints, resume) -> ``TrainResult``
* :mod:`.trainer` — one training step at a time (v-prediction, EMA weights, plain or DP-SGD)
* :mod:`.dp` — :class:`~.dp.DPConfig`, Opacus ``PrivacyEngine`` wiring, ε from the accountant
* :mod:`.card` — the training card (split, data fingerprint, conditioning, DP record)
* :mod:`.conditioning` — multi-label class conditioning as one joint class of a stock ``UNet2DModel``
* :mod:`.model` — :func:`~.model.load_model` -> ``LoadedModel``, :func:`~.model.model_fingerprint`, saving
* :mod:`.sample` — :func:`~.sample.sample_images`: deterministic per-index DDIM sampling
* :mod:`.sampler` — :func:`~.sampler.generate_release`: the guarded sampler -> ``GenerateResult``
* :mod:`.default` — the built-in phantom model, its recipe, and :func:`~.default.training_data_dir`
"""
