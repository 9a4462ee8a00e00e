"""The demo's tiny random-weight checkpoints, written as converted checkpoints.

A family's ``tiny.py`` gives a tiny checkpoint's config and tokenizer (``backbones.demo_backbone``,
a ``TinyBackbone``); here the config gets fixed-seed random weights and is saved with its
tokenizer. This module sits above ``backbone`` and the families, so that neither imports the
other back.
"""

import functools
from collections.abc import Callable
from pathlib import Path

from headhunt_jax import backbone, backbones, files


def writer(name: str) -> Callable[..., Path]:
    """The writer of the tiny demo checkpoint ``name`` (``demo --backbone``; an unknown name is
    an error now): (out_dir, prompts, seed=0, **options) -> the directory, ``options`` the
    family recipe's (``image_size``)."""
    backbones.demo_backbone(name)
    return functools.partial(write, name)


def write(name: str, out_dir, prompts, seed: int = 0, **options) -> Path:
    """Writes the tiny checkpoint ``name`` (random weights from ``seed``, a tokenizer trained on
    ``prompts``) to ``out_dir`` as a converted checkpoint with its tokenizer and the recipe's
    other files; returns the directory."""
    tiny = backbones.demo_backbone(name)(prompts, **options)
    out_dir = Path(out_dir)
    model = backbone.make_model(tiny.config)
    bb = backbone.Backbone(model, backbone.random_params(model, seed), tiny.name)
    backbone.save_converted(bb, out_dir)
    tiny.tokenizer.save(str(out_dir / "tokenizer.json"))
    files.write_manifest(out_dir)  # the tokenizer too, not only what save_converted wrote
    for file, text in tiny.files.items():
        (out_dir / file).write_text(text)
    return out_dir
