"""The Responsible-AI (Croissant RAI 1.0) part of a release's ``croissant.json``: provenance, checks, limits.

Everything here is read from the manifest's public ``fingerprints`` (model facts, policy, generation settings,
the checks' public configuration) and, when given, the training card's public summary. Those were written for
publication and hold no training file names, paths or patient ids; this module copies selected facts only
(never a whole section), so a field added to a fingerprint later does not leak into the card by accident. A
manifest comes from disk, so every section is type-checked and a malformed one is treated as absent.
"""

from __future__ import annotations

from typing import Any

CHECKS = {
    "memorization": "memorization (no near-copy of a training image: nearest neighbours by embedding, then "
                    "aligned pixel correlation, against thresholds calibrated on held-out patients)",
    "vessels": "vessels (no retinal vessel tree matching a training patient's: a biometric that identifies a "
               "person even in a new image)",
    "text": "text (no burned-in text such as names, ids or dates)",
    "faces": "faces (no human face)",
    "metadata": "metadata (no file metadata beyond the pixels: EXIF, PNG text chunks, comments)",
}
"""Plain-words description of each per-image check, by the name it records in the manifest."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> str | None:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def model_facts(manifest: dict[str, Any], card: Any = None) -> dict[str, Any]:
    """Public generator facts: the manifest's model record, completed by the card's public summary."""
    info = _dict(_dict(manifest.get("fingerprints")).get("model"))
    facts = {k: info.get(k) for k in ("fingerprint", "trained_by", "dp", "epsilon", "delta", "resolution", "steps")}
    if card is not None:
        summary = card.public_summary()
        facts.update({k: summary.get(k) for k in ("dp", "epsilon", "delta", "resolution", "steps")})
        facts["block_out_channels"] = list(card.block_out_channels)
    return {k: v for k, v in facts.items() if v is not None}


def _generator(facts: dict[str, Any]) -> str:
    parts = []
    if isinstance(facts.get("fingerprint"), str):
        parts.append(f"model fingerprint {facts['fingerprint']}")
    if facts.get("trained_by") in ("synfundus-guard", "external"):
        parts.append(f"trained by {facts['trained_by']}")
    if isinstance(facts.get("block_out_channels"), list):
        parts.append("diffusers UNet2DModel (DDPM) with block_out_channels "
                     + "/".join(str(c) for c in facts["block_out_channels"]))
    if (res := _number(facts.get("resolution"))) is not None:
        parts.append(f"{res}x{res} pixels")
    if (steps := _number(facts.get("steps"))) is not None:
        parts.append(f"{steps} training steps")
    return "; ".join(parts)


def _privacy(facts: dict[str, Any]) -> str:
    eps, delta = _number(facts.get("epsilon")), _number(facts.get("delta"))
    if facts.get("dp") is True and eps is not None:
        return (f"The generator was trained with differential privacy (DP-SGD, Opacus): epsilon = {eps}"
                + (f", delta = {delta}" if delta is not None else "") + " over its training set.")
    if facts.get("dp") is False:
        return "The generator was not trained with differential privacy: no formal privacy bound applies."
    return "Whether the generator was trained with differential privacy is not recorded."


def _checks(fingerprints: dict[str, Any]) -> list[str]:
    checks = fingerprints.get("checks")
    names = [c.get("name") for c in checks if isinstance(c, dict)] if isinstance(checks, list) else []
    return [CHECKS.get(n, f"{n} (a per-image check)") for n in names if isinstance(n, str)]


def _generated(manifest: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """RAI fields of a release written by the guarded sampler."""
    fp = _dict(manifest.get("fingerprints"))
    policy, gen = _dict(fp.get("policy")), _dict(fp.get("generation"))
    checks = _checks(fp)
    under = f" under policy {policy['name']!r} (sha256 {policy.get('sha256')})" if isinstance(
        policy.get("name"), str) else ""
    passed = (f"Every image passed these checks{under}: " + "; ".join(checks) + "." if checks
              else "No per-image privacy checks ran on these images.")
    collection = ("Synthetic: every image was sampled from a generative model through synfundus-guard's guarded "
                  "sampler, and no image was taken from a person. Generator: " + (_generator(facts) or "not recorded")
                  + ". Images that failed a check were quarantined privately and are not part of the release.")
    sampling = [f"Sampling: {gen.get('sampler', 'not recorded')}, {gen.get('steps')} steps, run seed {gen.get('seed')}"
                f"; image i depends only on (seed, i), so the release can be regenerated."] if gen else []
    return {
        "rai:dataCollection": collection,
        "rai:dataCollectionType": ["Synthetic data generation (sampled from a generative model)"],
        "rai:dataCollectionRawData": "None released: the generator's training images are private and are not "
                                     "part of this release; no file here names a training image, image id or "
                                     "patient.",
        "rai:dataPreprocessingProtocol": sampling + ["Images are written as PNG without metadata; per-image "
                                                     "fields (seed, labels, scores, verdict) are in metadata.jsonl."],
        "rai:personalSensitiveInformation": [
            "The images are synthetic, but a generative model can reproduce its training patients. " + passed,
            _privacy(facts)],
        "rai:dataLimitations": [
            "Synthetic images reproduce the generator's training distribution with its artefacts; they are not "
            "a substitute for clinical data.",
            "The leak checks are statistical screens with calibrated thresholds: passing them is evidence, not "
            "proof, that no training patient can be recognised.",
            _privacy(facts)],
        "rai:dataBiases": ["The images inherit the biases of the generator's private training set (population, "
                           "devices, disease prevalence), which this release does not describe."],
    }


def rai_properties(*, manifest: dict[str, Any], card: Any = None) -> dict[str, Any]:
    """The ``rai:*`` properties for a release; a folder sealed by ``guard manifest`` says what is not known."""
    facts = model_facts(manifest, card)
    if "run" in manifest or facts:
        props = _generated(manifest, facts)
    else:
        props = {"rai:dataCollection": "Not recorded: the folder was sealed by `guard manifest` and its manifest "
                                       "holds no generation record."}
    return {
        **props,
        "rai:dataUseCases": ["Developing, testing and teaching image analysis methods where real patient images "
                             "cannot be shared.",
                             "Not for clinical decisions, nor for validating diagnostic models."],
        "rai:dataReleaseMaintenancePlan": "Static release: manifest.json pins every image by sha256, and "
                                          "`guard verify` reports any change.",
    }
