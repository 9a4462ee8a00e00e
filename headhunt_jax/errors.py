"""The errors that are the user's to fix, told apart from bugs.

A ``UserError`` says what in the input (a file, a flag, a dataset, a store, a checkpoint) is
wrong; the CLI prints its message as one line and exits with status 1. Any other exception is a
bug and keeps its traceback. ``InputError`` is the ``ValueError`` of bad input: code and tests
that catch ``ValueError`` go on catching it.
"""


class UserError(Exception):
    """A problem with what the user gave, not with the code: the message says which and why."""


class InputError(UserError, ValueError):
    """A value the user gave (a flag, a file's content, a video's name) that cannot be used."""
