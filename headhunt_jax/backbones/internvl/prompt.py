"""Prompt assembly for InternVL3: the token sequence InternVL's own ``chat()`` builds.

``chat()`` uses the ``internvl2_5`` conversation template (ChatML with InternVL's system
message), puts the question in the user turn and ends with the assistant turn's opening; every
``<image>`` becomes ``<img>`` + image-context tokens + ``</img>``. The published expert heads were
found on exactly this sequence.
"""

from pathlib import Path

import numpy as np

from headhunt_jax.models.tokenizer import load_tokenizer

SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


def video_question(prompt: str, num_frames: int) -> str:
    """``Frame1: <image>\\n ... FrameF: <image>\\n`` followed by the prompt."""
    return "".join(f"Frame{i + 1}: <image>\n" for i in range(num_frames)) + prompt


def chat_query(
    prompt: str, num_frames: int, tokens_per_image: int = 256, system_message: str = SYSTEM_MESSAGE
) -> str:
    """The full text of the model input, with the image placeholders expanded."""
    question = video_question(prompt, num_frames)
    query = (
        f"<|im_start|>system\n{system_message}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # chat() expands one placeholder per image, leftmost first; a literal "<image>" typed in the
    # prompt after the frames stays text.
    return query.replace(
        "<image>", IMG_START + IMG_CONTEXT * tokens_per_image + IMG_END, num_frames
    )


def build_prompt_ids(
    tokenizer,
    prompt: str,
    num_frames: int = 16,
    tokens_per_image: int = 256,
    image_token_id: int | None = None,
    system_message: str = SYSTEM_MESSAGE,
) -> np.ndarray:
    """input_ids [T] int32 for one segment of ``num_frames`` frames and a prompt.

    ``tokenizer``: a ``tokenizers.Tokenizer`` or a path for ``load_tokenizer``. If
    ``image_token_id`` is given, the tokenizer must map ``<IMG_CONTEXT>`` to it.
    """
    if isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(tokenizer)
    for token in (IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>"):
        if tokenizer.token_to_id(token) is None:
            raise ValueError(f"the tokenizer has no {token} token: not an InternVL tokenizer")
    context_id = tokenizer.token_to_id(IMG_CONTEXT)
    if image_token_id is not None and context_id != image_token_id:
        raise ValueError(
            f"the tokenizer maps {IMG_CONTEXT} to {context_id}, the backbone expects {image_token_id}"
        )
    query = chat_query(prompt, num_frames, tokens_per_image, system_message)
    ids = np.asarray(tokenizer.encode(query, add_special_tokens=False).ids, np.int32)
    if int((ids == context_id).sum()) != num_frames * tokens_per_image:
        raise ValueError("the prompt text itself contains image tokens")
    return ids
