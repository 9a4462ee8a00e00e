"""Tokenizers: a checkpoint's own (``load_tokenizer``) and a small byte-level BPE one for the
families' tiny random checkpoints (demo and tests)."""

from pathlib import Path


def load_tokenizer(path):
    """A ``tokenizers.Tokenizer`` from a checkpoint directory or a tokenizer.json file; one that
    cannot be read (not UTF-8, not JSON, not a tokenizer) is an ``InputError`` naming the file."""
    from tokenizers import Tokenizer

    from headhunt_jax import files
    from headhunt_jax.errors import InputError

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"{file}: no tokenizer.json (the checkpoint's fast tokenizer is needed)"
        )
    what = "a tokenizer (tokenizer.json)"
    text = files.read_text(file, what)
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # the tokenizers library raises a bare Exception on a bad file
        try:  # not JSON: told with its line and column
            files.parse_json(text, file)
            why = files.first_line(e)
        except InputError as bad:
            why = str(bad).removeprefix(f"{file}: ")
        raise InputError(f"{file}: not a readable tokenizer ({why})") from None


def tiny_tokenizer(corpus, special_tokens):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``corpus`` (600 ids), then
    ``special_tokens`` added after them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(list(special_tokens))
    return tok
