"""The InternVL3 prompt: checked against a sequence assembled by hand, piece by piece."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from headhunt_jax.backbones.internvl.prompt import build_prompt_ids
from headhunt_jax.models.tokenizer import load_tokenizer

SPECIAL = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        SYSTEM,
        "Frame1: Frame2: system user assistant",
        "Identify any abnormal events in this video.",
    ]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok.add_special_tokens(SPECIAL)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def expected_ids(tok, prompt, frames, per_image):
    """InternVL chat(): ChatML with the system message, the frames, the prompt, the assistant
    opening; text pieces between special tokens encoded on their own."""
    sid = tok.token_to_id

    def text(s):
        return tok.encode(s, add_special_tokens=False).ids

    ids = [sid("<|im_start|>")] + text("system\n" + SYSTEM) + [sid("<|im_end|>")] + text("\n")
    ids += [sid("<|im_start|>")] + text("user\n")
    for i in range(frames):
        ids += text(f"\nFrame{i + 1}: " if i else f"Frame{i + 1}: ")
        ids += [sid("<img>")] + [sid("<IMG_CONTEXT>")] * per_image + [sid("</img>")]
    ids += text("\n" + prompt) + [sid("<|im_end|>")] + text("\n")
    ids += [sid("<|im_start|>")] + text("assistant\n")
    return ids


@pytest.mark.parametrize("frames, per_image", [(16, 256), (3, 4), (1, 1)])
def test_prompt_ids_match_hand_built_sequence(tokenizer, frames, per_image):
    prompt = "Identify any abnormal events or safety hazards in this video."
    got = build_prompt_ids(tokenizer, prompt, frames, per_image)
    tok = load_tokenizer(tokenizer.parent)
    assert got.dtype == np.int32
    assert got.tolist() == expected_ids(tok, prompt, frames, per_image)
    decoded = tok.decode(got.tolist(), skip_special_tokens=False)
    assert decoded.startswith("<|im_start|>system\n" + SYSTEM) and decoded.endswith(
        "<|im_start|>assistant\n"
    )


def test_prompt_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="maps <IMG_CONTEXT> to"):
        build_prompt_ids(tokenizer, "p", 2, 4, image_token_id=12345)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_prompt_ids(tmp_path, "p", 2, 4)
    plain = Tokenizer(models.BPE())
    with pytest.raises(ValueError, match="no <img> token"):
        build_prompt_ids(plain, "p", 2, 4)


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizer"):
        load_tokenizer(tmp_path)
