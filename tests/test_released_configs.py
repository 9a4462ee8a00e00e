"""Released checkpoints' config.json files, as published (tests/fixtures/released_configs, their
sources in its README): each parses, equals the preset of its name, and the preset's parameter
count (from abstract parameters, no weights) equals the count its checkpoint states
(``model.safetensors.index.json``'s ``metadata.total_size`` in bytes, halved for bf16)."""

import json
import math
from pathlib import Path

import pytest

from headhunt_jax import backbone

CONFIGS = Path(__file__).parent / "fixtures" / "released_configs"

# file -> (preset, stated parameters); the README gives each statement's source.
RELEASED = {
    "InternVL3-8B.chat.json": ("InternVL3-8B", 15_888_747_520 // 2),
    "InternVL3.5-8B.chat.json": ("InternVL3.5-8B", 17_056_636_928 // 2),
    "Qwen2.5-VL-3B.json": ("Qwen2.5-VL-3B", 7_509_245_952 // 2),
    "Qwen2.5-VL-7B.json": ("Qwen2.5-VL-7B", 16_584_333_312 // 2),
}


def parameter_count(cfg) -> int:
    shapes = backbone.param_shapes(backbone.make_model(cfg))
    return sum(math.prod(s) for s in shapes.values())


def test_every_kept_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.json")) == sorted(RELEASED)


@pytest.mark.parametrize("file", sorted(RELEASED))
def test_released_config_equals_its_preset_and_stated_size(file):
    name, stated = RELEASED[file]
    cfg = backbone.config_from_hf(json.loads((CONFIGS / file).read_text()))
    assert cfg == backbone.preset(name)
    assert parameter_count(cfg) == stated


def test_dynamic_rope_holds_up_to_the_trained_length():
    """InternVL3's Qwen2.5 keeps dynamic NTK rope scaling (factor 2): the default frequencies
    up to 32,768 positions, other numbers past them, which are refused."""
    cfg = json.loads((CONFIGS / "InternVL3-8B.chat.json").read_text())
    text = backbone.config_from_hf(cfg).text
    assert text.rope_scaling == () and text.max_positions == 32768
    llm = dict(cfg["llm_config"], rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        backbone.config_from_hf({**cfg, "llm_config": llm})


# Presets whose config was not found verbatim: the size of their weight files as the Hub's file
# listing shows it (decimal GB, three significant digits; the README of released_configs), bf16.
LISTED = {
    "InternVL3-1B": (1.88e9, 0.005e9),  # model.safetensors, in both formats
    "InternVL3-2B": (4.18e9, 0.005e9),  # model.safetensors
    "InternVL3.5-1B": (2.12e9, 0.005e9),  # model.safetensors
    "llava-onevision-qwen2-7b-ov": ((4.91 + 4.99 + 4.93 + 1.23) * 1e9, 0.02e9),  # 4 shards
}


@pytest.mark.parametrize("name", sorted(LISTED))
def test_preset_size_equals_the_listed_weight_files(name):
    listed, rounding = LISTED[name]
    assert abs(2 * parameter_count(backbone.preset(name)) - listed) <= rounding
