"""Qwen3-VL (``Qwen3VLForConditionalGeneration``, model_type ``qwen3_vl``): a ViT with learned
positions resampled to each image's grid and 2-D rotary embeddings, a patch merger, DeepStack
mergers whose tokens join the first decoder layers, and a Qwen3 decoder with interleaved 3-D
rotary positions (M-RoPE) over timestamped video."""
