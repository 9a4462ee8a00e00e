"""What the backbone families share: the decoder, layers, stacked blocks, the vision kit and
the tokenizer."""
