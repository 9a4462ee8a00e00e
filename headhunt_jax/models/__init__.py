"""Flax linen ports of the backbones, one file per family."""
