"""The entry points every backbone family's Flax module shares.

A family module defines ``setup`` (its vision tower and projector, and ``language_model``, the
shared ``Decoder``) and ``embed(input_ids, **vision_inputs)``: the token embeddings [B, T, E]
with its vision features placed at their placeholder tokens. A family whose vision features
also join the first decoder layers (DeepStack) defines ``decoder_inputs`` too, which
adds them as ``residuals`` [R, B, T, E] (``Decoder._layers``). The jobs below are then the
decoder's, one method each (``model.apply(variables, ..., method="features")``):

- ``features``: head features and hidden states at the last position (early exit at
  ``depth``; after a ``cache`` of a shared prefix);
- ``prefill``: the key/value cache of layers < ``depth``;
- ``logits``: the full model's logits (and ``__call__``, which creates every parameter);
- ``step``: one generation step against a cache (text tokens only).

``vision_inputs`` are the family's module inputs (the HF keyword inputs after its ``prepare``),
``positions`` each token's rotary position ([B, T], or [B, T, 3] under M-RoPE; None: counted by
the decoder).
"""

import flax.linen as nn


class FamilyModule(nn.Module):
    """Base of the family modules: ``embed`` is theirs, the rest is the decoder's."""

    def embed(self, input_ids, **vision_inputs):
        raise NotImplementedError

    def decoder_inputs(self, input_ids, **vision_inputs):
        """(embeddings [B, T, E], residuals [R, B, T, E] added after decoder layers 0 .. R-1, or
        None): what every job gives the decoder."""
        return self.embed(input_ids, **vision_inputs), None

    def features(
        self, input_ids, depth=None, positions=None, cache=None, kinds=("heads",), **vision_inputs
    ):
        """{kind: [B, depth, ...]}: ``Decoder.features`` of the embedded inputs."""
        embeds, residuals = self.decoder_inputs(input_ids, **vision_inputs)
        return self.language_model.features(embeds, positions, depth, cache, kinds, residuals)

    def prefill(
        self, input_ids, depth=None, positions=None, cache=None, key_mask=None, **vision_inputs
    ):
        """(keys, values), each [depth, B, K, T, H]: ``Decoder.prefill`` of the inputs."""
        embeds, residuals = self.decoder_inputs(input_ids, **vision_inputs)
        return self.language_model.prefill(embeds, positions, depth, cache, key_mask, residuals)

    def logits(self, input_ids, positions=None, **vision_inputs):
        """[B, T, V]: ``Decoder.logits`` of the embedded inputs."""
        embeds, residuals = self.decoder_inputs(input_ids, **vision_inputs)
        return self.language_model.logits(embeds, positions, residuals=residuals)

    def step(self, input_ids, positions, layers, caches, slot, key_mask):
        """``Decoder.step``: one text token a row against the caches."""
        return self.language_model.step(input_ids, positions, layers, caches, slot, key_mask)

    def __call__(self, input_ids, positions=None, **vision_inputs):
        return self.logits(input_ids, positions, **vision_inputs)
