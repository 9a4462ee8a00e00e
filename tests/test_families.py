"""The family contract (``headhunt_jax.backbones``), checked the same way for every registered
family: its ``init_inputs`` create the parameters, its key table maps onto them one row each,
its configs survive ``from_dict``, and its tiny demo checkpoints write and load.

A family's example configs are its presets and tiny demo configs, and every other family's
decoder that is of its config type (the text family's configs are the vision families'
decoders). Optional parameters (biases, qk-norms, an untied head, a final norm) appear in the
examples with one boolean field flipped.
"""

import dataclasses
import functools
import json
import re

import flax
import numpy as np
import pytest

from headhunt_jax import backbone, backbones, tiny_checkpoints, weights

FAMILIES = list(dict.fromkeys(backbones.FAMILIES.values()))
PROMPTS = ["Anything odd here?"]


def by_name(families):
    return pytest.mark.parametrize("family", families, ids=[f.name for f in families])


@functools.cache
def tiny_configs() -> dict:
    """{demo name: config} of every family's tiny demo checkpoints."""
    return {
        name: recipe(PROMPTS).config
        for family in FAMILIES
        for name, recipe in family.demo_backbones.items()
    }


def examples(family, tiny: bool = True, presets: bool = True) -> dict:
    """{name: config}: the configs of ``family`` among every family's tiny configs and presets
    and their decoders."""
    configs = {**(tiny_configs() if tiny else {})}
    if presets:
        configs.update(backbones.presets())
    out = {}
    for name, cfg in configs.items():
        for key, c in ((name, cfg), (f"{name}.text", cfg.text)):
            if backbones.for_config(c) is family:
                out[key] = c
    return out


def flipped(cfg):
    """``cfg`` with each of its boolean fields flipped in turn (in nested configs too)."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, bool):
            yield dataclasses.replace(cfg, **{field.name: not value})
        elif dataclasses.is_dataclass(value):
            for inner in flipped(value):
                yield dataclasses.replace(cfg, **{field.name: inner})


def layer_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """{path: shape} of a config's parameters, each layer of a stack under its own path (as the
    key tables address them)."""
    return weights.unstack_shapes(backbone.param_shapes(backbone.make_model(cfg)))


def capture_groups(pattern: str) -> list[str]:
    """The capturing groups' sub-patterns of a regex, in the order of their numbers."""
    groups, open_at, escaped, in_class = {}, [], False, False
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            open_at.append(None if pattern[i + 1] == "?" else i)
        elif ch == ")":
            start = open_at.pop()
            if start is not None:
                groups[start] = pattern[start + 1 : i]
    return [groups[start] for start in sorted(groups)]


def row_targets(table: weights.KeyTable) -> list[tuple[str, re.Pattern]]:
    """(template, regex of the param paths it can produce) of each row: the template with each
    group reference replaced by what that group of the key pattern matches."""
    out = []
    for pattern, template, _ in table.rows:
        groups = capture_groups(pattern.pattern)
        parts = re.split(r"\\(\d)", template)  # literal, group number, literal, ...
        regex = "".join(
            re.escape(p) if i % 2 == 0 else f"(?:{groups[int(p) - 1]})" for i, p in enumerate(parts)
        )
        out.append((template, re.compile(regex)))
    return out


def table_problems(table: weights.KeyTable, configs) -> list[str]:
    """What is wrong between a key table and the parameters of ``configs``: a parameter no row
    produces or several do, a row that produces no parameter of any of them."""
    targets, used, problems = row_targets(table), set(), []
    for cfg in configs:
        for path in layer_shapes(cfg):
            rows = [t for t, regex in targets if regex.fullmatch(path)]
            used.update(rows)
            if len(rows) != 1:
                problems.append(f"{path}: {len(rows)} rows {rows}")
    problems += [f"row {t} produces no parameter" for t, _ in targets if t not in used]
    return sorted(set(problems))


def test_every_family_has_examples():
    assert {f.name for f in FAMILIES} == {
        "internvl",
        "llava_onevision",
        "qwen2_5_vl",
        "qwen3_vl",
        "text",
    }
    for family in FAMILIES:
        assert examples(family, presets=False), family.name


@by_name(FAMILIES)
def test_init_inputs_create_the_parameters(family):
    """``backbone.param_shapes`` inits the module abstractly with ``init_inputs``: every
    example's decoder is ``language_model``, its embedding of the config's shape."""
    for name, cfg in examples(family).items():
        inputs = family.init_inputs(cfg)
        assert inputs["input_ids"].ndim == 2, name
        shapes = backbone.param_shapes(backbone.make_model(cfg))
        embed = (cfg.text.vocab_size, cfg.text.hidden_size)
        assert shapes["language_model/embed_tokens"] == embed, name


@by_name(FAMILIES)
def test_key_table_maps_every_parameter_once(family):
    tiny = examples(family, presets=False).values()
    configs = [*tiny, *(v for cfg in tiny for v in flipped(cfg)), *examples(family).values()]
    assert table_problems(family.keys, configs) == []


def test_the_key_table_check_finds_gaps_overlaps_and_dead_rows():
    family = backbones.for_name("llava_onevision")
    cfg = tiny_configs()["llava-onevision"]
    rows = [(p.pattern[:-1], t, fn) for p, t, fn in family.keys.rows]
    fc = next(r for r in rows if r[1] == r"vision/layers_\1/\2/kernel")
    gap = weights.KeyTable([r for r in rows if r is not fc])
    assert "vision/layers_0/fc1/kernel: 0 rows []" in table_problems(gap, [cfg])
    overlap = weights.KeyTable([*rows, (r"other\.(\d+)", r"vision/layers_\1/fc1/kernel", None)])
    assert any(
        p.startswith("vision/layers_1/fc1/kernel: 2 rows") for p in table_problems(overlap, [cfg])
    )
    dead = weights.KeyTable([*rows, (r"extra", "vision/extra", None)])
    assert "row vision/extra produces no parameter" in table_problems(dead, [cfg])
    assert "row vision/extra produces no parameter" not in table_problems(family.keys, [cfg])


@by_name(FAMILIES)
def test_configs_round_trip_through_from_dict(family):
    """``from_dict`` inverts ``dataclasses.asdict``, also through JSON (converted checkpoints
    store it so: tuples come back as lists)."""
    for name, cfg in examples(family).items():
        d = dataclasses.asdict(cfg)
        assert family.config_type.from_dict(d) == cfg, name
        assert family.config_type.from_dict(json.loads(json.dumps(d))) == cfg, name


@pytest.mark.slow
@by_name([f for f in FAMILIES if f.demo_backbones])
def test_tiny_checkpoints_write_and_load(family, tmp_path):
    for name, recipe in family.demo_backbones.items():
        tiny = recipe(PROMPTS)
        bb = backbone.load_backbone(tiny_checkpoints.write(name, tmp_path / name, PROMPTS))
        assert (bb.family, bb.config, bb.name) == (family, tiny.config, tiny.name)
        params = flax.traverse_util.flatten_dict(bb.params, sep="/")
        assert {k: v.shape for k, v in params.items()} == backbone.param_shapes(bb.model)
        assert all(np.isfinite(np.asarray(v)).all() for v in params.values()), name
        proc = bb.processor()
        size = proc.frames["image_size"]  # a family's own size, or its rule for a video's size
        ids = proc.prompt_ids(PROMPTS[0], 2, size(56, 56) if callable(size) else (size, size))
        assert np.isin(ids, tiny.config.vision_token_ids).any(), name
