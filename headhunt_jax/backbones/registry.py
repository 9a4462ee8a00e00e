"""The registry of backbone families: ``Family`` (what a family provides; the contract is the
``headhunt_jax.backbones`` docstring), ``register`` and the lookups. Families import this module,
and ``headhunt_jax.backbones`` imports the families, so that the registry sits below them."""

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
    ``prompt_ids(prompt, num_frames, size, frame_seconds)``: input_ids [T] int32 for frames of
    ``size`` (H, W), ``frame_seconds`` apart; ``timed``: whether these ids depend on
    ``frame_seconds`` (Qwen3-VL's video timestamps are text), so that segments of other frame
    spacings need ids of their own (callers batch them apart; others ignore the seconds);
    ``vision_inputs(pixels, frame_seconds)``: segments' pixels [B, F, 3, H, W] (and the seconds
    between their sampled frames [B], for families that place frames in time) -> the module's
    keyword inputs; ``spec``: what to record with features.
    """

    frames: Mapping[str, Any]
    spec: Mapping[str, Any]
    timed: bool

    def prompt_ids(
        self, prompt: str, num_frames: int, size=None, frame_seconds=None
    ) -> np.ndarray: ...

    def vision_inputs(self, pixels: np.ndarray, frame_seconds=None) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class TinyBackbone:
    """What a tiny random-weight checkpoint is made of (``headhunt_jax.tiny_checkpoints`` gives
    it fixed-seed random weights and writes it): its config, its tokenizer (a
    ``tokenizers.Tokenizer``), its name, and files it keeps besides ({file name: text})."""

    config: Any
    tokenizer: Any
    name: str
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """A backbone family (the ``headhunt_jax.backbones`` docstring says what each part does)."""

    name: str  # recorded in converted checkpoints
    model_types: tuple[str, ...]  # config.json's model_type values it reads
    config_type: type
    module: type
    keys: KeyTable
    init_inputs: Callable[[Any], dict]
    check_inputs: Callable[[Any, np.ndarray, dict], None]
    prepare: Callable[[Any, list, dict], tuple[dict, list | None]] | None = None
    # The vision inputs ``prepare`` takes traced (it only gathers them into its layout): with
    # input_ids and the rest concrete, head features are traceable in these (``jax.grad``).
    traceable_inputs: tuple[str, ...] = ()
    checkpoint_config: Callable[[dict, Any], dict] | None = None
    processor: Callable[..., Processor] | None = None
    presets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The demo's tiny checkpoints, by name: (prompts, **options) -> TinyBackbone.
    demo_backbones: Mapping[str, Callable[..., TinyBackbone]] = dataclasses.field(
        default_factory=dict
    )


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


def demo_backbone(name: str) -> Callable[..., TinyBackbone]:
    """The recipe of the tiny demo checkpoint ``name`` (``demo --backbone``): (prompts,
    **options) -> ``TinyBackbone``; ``tiny_checkpoints`` writes it."""
    known = {n: f for family in FAMILIES.values() for n, f in family.demo_backbones.items()}
    if name not in known:
        raise ValueError(f"no demo backbone {name!r} (known: {', '.join(sorted(known))})")
    return known[name]


def presets() -> dict[str, Any]:
    """Every family's presets: {name: config}."""
    return {name: cfg for f in FAMILIES.values() for name, cfg in f.presets.items()}
