"""A small byte-level BPE tokenizer for the families' tiny random checkpoints (demo and tests)."""


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
