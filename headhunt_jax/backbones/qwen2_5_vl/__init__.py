"""Qwen2.5-VL (transformers' ``Qwen2_5_VLForConditionalGeneration``): the vision tower
(``vision``), its config (``config``), the decoder's 3-D rotary positions (``rope``) and the
image processor's pixels (``processor_pixels``). Not registered as a family yet: the decoder's
M-RoPE, the merging of vision embeddings into the decoder and the key table come later.
"""
