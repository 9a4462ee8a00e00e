"""headhunt-jax: video anomaly detection from single attention heads of a frozen MLLM.

The public API (stable names) is listed in ``_PUBLIC``; ``dir(headhunt_jax)`` shows it and
nothing else. Submodules are imported on first use so that ``import headhunt_jax`` and the CLI's
``--help`` stay fast.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    # backbone
    "load_backbone": "headhunt_jax.backbone",
    "head_features": "headhunt_jax.features",
    "head_features_prompts": "headhunt_jax.features",
    "hidden_features": "headhunt_jax.features",
    "generate": "headhunt_jax.generation",
    "prefill": "headhunt_jax.generation",
    "Backbone": "headhunt_jax.backbone",
    "make_mesh": "headhunt_jax.sharding",
    "build_prompt_ids": "headhunt_jax.backbones.internvl.prompt",
    # head hunting
    "saliency": "headhunt_jax.hunt",
    "robust_saliency": "headhunt_jax.hunt",
    "top_k_heads": "headhunt_jax.hunt",
    "head_attribution": "headhunt_jax.attribution",
    # hidden-state probing (HiProbe-VAD)
    "layer_saliency": "headhunt_jax.probe",
    "top_layer": "headhunt_jax.probe",
    # scorer
    "fit_scorer": "headhunt_jax.scorer",
    "score": "headhunt_jax.scorer",
    # temporal locator
    "smooth": "headhunt_jax.locator",
    "localize": "headhunt_jax.locator",
    "event_mask": "headhunt_jax.locator",
    "calibrate": "headhunt_jax.locator",
    # detector bundle and evaluation
    "Detector": "headhunt_jax.detector",
    "evaluate_frames": "headhunt_jax.evaluation",
    "ranking_metrics": "headhunt_jax.evaluation",
    # pipeline: videos, stores, datasets
    "VideoReader": "headhunt_jax.video",
    "extract_features": "headhunt_jax.extract",
    "FeatureStore": "headhunt_jax.store",
    "load_dataset": "headhunt_jax.datasets",
    "calibration_subset": "headhunt_jax.datasets",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'headhunt_jax' has no attribute {name!r}")


def __dir__():
    """The public names only (not this module's imports, nor the submodules loaded so far)."""
    return sorted(_PUBLIC)
