"""Backbone families, one folder each: its config (a frozen dataclass with a strict ``from_hf``,
``from_dict`` and presets), its Flax module, its HF key table and its processor. ``FAMILIES``
maps a checkpoint's ``model_type`` to its family; outside a family's folder nothing names one.

The contract a family keeps:

- config: ``from_hf(config.json dict)``, ``from_dict(dataclasses.asdict(config))``, ``text`` (the
  decoder's ``DecoderConfig``) and ``vision_token_ids`` (the placeholder tokens that vision
  inputs fill; empty for text-only);
- module ``(cfg, dtype, attention_impl)``: a ``models.family.FamilyModule`` whose ``setup``
  builds its vision tower and ``language_model`` (the shared decoder) and whose
  ``embed(input_ids, **vision_inputs)`` places its vision features at their placeholder
  tokens; the jobs (``features``, ``prefill``, ``logits``, ``step``) are the base class's.
  ``vision_inputs`` are the HF model's own keyword arguments (``pixel_values``,
  ``pixel_values_videos``, ...), after ``prepare`` where the family has one;
- ``init_inputs(cfg)``: the smallest call's keyword inputs (for shapes and random weights);
- ``check_inputs(cfg, input_ids, vision_inputs)``: a clear ValueError when they do not fit;
- ``prepare(cfg, prompt_ids, vision_inputs, attention_mask=None)`` (optional; default: the
  inputs as they are and positions counted by the decoder): the HF keyword inputs -> (the
  module's vision inputs, each prompt's positions), on the host, for families whose shapes or
  positions depend on data (image grids, M-RoPE); every array it returns has the batch first;
  ``attention_mask`` (generation: one left-padded prompt) marks the padding that positions skip;
- ``checkpoint_config(config.json dict, checkpoint_dir)`` (optional): the dict completed with what
  a checkpoint format keeps outside config.json (InternVL's original format: its image token,
  from the tokenizer), before ``from_hf``;
- ``processor(cfg, checkpoint_dir, image_size)``: decoded frames + a prompt -> the module's inputs
  (``Processor``), or None for a text-only family;
- ``demo_backbones``: tiny random-weight checkpoints of the family for ``demo --backbone``.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from headhunt_jax.weights import KeyTable


class Processor(Protocol):
    """Turns one segment's frames and a prompt into a family's inputs.

    ``frames``: how the video reader prepares each sampled frame (``VideoReader`` keyword
    arguments: ``image_size``, an int for a square or a rule (height, width) -> (height, width)
    for each video's own size, ``mean``, ``std``), giving float32 [F, 3, H, W] a segment;
    ``prompt_ids(prompt, num_frames, size)``: input_ids [T] int32 for frames of ``size`` (H, W);
    ``vision_inputs(pixels, frame_seconds)``: segments' pixels [B, F, 3, H, W] (and the seconds
    between their sampled frames [B], for families that place frames in time) -> the module's
    keyword inputs; ``spec``: what to record with features.
    """

    frames: Mapping[str, Any]
    spec: Mapping[str, Any]

    def prompt_ids(self, prompt: str, num_frames: int, size=None) -> np.ndarray: ...

    def vision_inputs(self, pixels: np.ndarray, frame_seconds=None) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """A backbone family (see the module docstring for what each part does)."""

    name: str  # recorded in converted checkpoints
    model_types: tuple[str, ...]  # config.json's model_type values it reads
    config_type: type
    module: type
    keys: KeyTable
    init_inputs: Callable[[Any], dict]
    check_inputs: Callable[[Any, np.ndarray, dict], None]
    prepare: Callable[[Any, list, dict], tuple[dict, list | None]] | None = None
    checkpoint_config: Callable[[dict, Any], dict] | None = None
    processor: Callable[..., Processor] | None = None
    presets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Tiny random-weight checkpoints for the demo, by name: (out_dir, prompts, seed) -> directory.
    demo_backbones: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    for model_type in family.model_types:
        if model_type in FAMILIES:
            raise ValueError(f"model_type {model_type!r} has two families")
        FAMILIES[model_type] = family
    return family


def for_model_type(model_type) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model_type {model_type!r} (supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def for_name(name: str) -> Family:
    for family in FAMILIES.values():
        if family.name == name:
            return family
    raise ValueError(f"unknown backbone family {name!r}")


def for_config(cfg) -> Family:
    for family in FAMILIES.values():
        if type(cfg) is family.config_type:
            return family
    raise TypeError(f"no backbone family has the config type {type(cfg).__name__}")


def demo_backbone(name: str) -> Callable[..., Any]:
    """The writer of the tiny demo checkpoint ``name`` (``demo --backbone``)."""
    known = {n: f for family in FAMILIES.values() for n, f in family.demo_backbones.items()}
    if name not in known:
        raise ValueError(f"no demo backbone {name!r} (known: {', '.join(sorted(known))})")
    return known[name]


def presets() -> dict[str, Any]:
    """Every family's presets: {name: config}."""
    return {name: cfg for f in FAMILIES.values() for name, cfg in f.presets.items()}


# One line a family.
from headhunt_jax.backbones import internvl, llava_onevision, qwen2_5_vl, text  # noqa: E402, F401
