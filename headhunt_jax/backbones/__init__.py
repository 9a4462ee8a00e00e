"""Backbone families, one folder each; ``FAMILIES`` maps a checkpoint's ``model_type`` to its
family; outside a family's folder nothing names one.

A family's folder holds the same files as every other:

- ``config.py``: its configs (frozen dataclasses with a strict ``from_hf`` and ``from_dict``)
  and ``PRESETS``, the released sizes' shapes;
- ``modeling.py``: its Flax module (what it shares with other families lives in ``models/``: the
  decoder, ``models.vision``'s patch embedding, ViT block and feature placement);
- ``inputs.py``: ``init_inputs``, ``check_inputs`` and, where it has one, ``prepare``;
- ``params.py``: its HF key table (``KEYS``);
- ``processor.py``: frames + prompt -> the module's inputs;
- ``tiny.py``: the demo's tiny checkpoints (config and tokenizer; ``tiny_checkpoints`` writes
  them, above this package and ``backbone``);
- ``__init__.py``: its ``register(Family(...))`` and the imports it needs;

and files of its own for what these do not hold (a vision tower in ``vision.py``, InternVL's
prompt, Qwen2.5-VL's rotary positions and pixel patches). The text family (Qwen2/Qwen3/Llama
causal LMs, for checking the decoder's port) has ``modeling.py``, ``inputs.py`` and
``__init__.py`` only: its config is the decoder's (``models.decoder.DecoderConfig``), its key
table the decoder's (``weights.TEXT_TABLE``), and it has no processor nor demo checkpoint, since
extraction needs vision. Its tests: ``tests/test_<family>.py``; ``tests/test_families.py`` checks
every family against this contract.

The contract a family keeps (``Family``, in ``registry``):

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
- ``keys``: the HF key table, one row for each parameter of the module;
- ``checkpoint_config(config.json dict, checkpoint_dir)`` (optional): the dict completed with what
  a checkpoint format keeps outside config.json (InternVL's original format: its image token,
  from the tokenizer), before ``from_hf``;
- ``processor(cfg, checkpoint_dir, image_size)``: decoded frames + a prompt -> the module's inputs
  (``Processor``), or None for a text-only family;
- ``demo_backbones``: the recipes of tiny random-weight checkpoints of the family for ``demo
  --backbone`` (``TinyBackbone``).
"""

# One line a family.
from headhunt_jax.backbones import internvl, llava_onevision, qwen2_5_vl, qwen3_vl, text  # noqa: F401
from headhunt_jax.backbones.registry import (
    FAMILIES,
    Family,
    Processor,
    TinyBackbone,
    demo_backbone,
    for_config,
    for_model_type,
    for_name,
    presets,
    register,
)

__all__ = [
    "FAMILIES",
    "Family",
    "Processor",
    "TinyBackbone",
    "demo_backbone",
    "for_config",
    "for_model_type",
    "for_name",
    "presets",
    "register",
]
