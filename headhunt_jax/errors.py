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


class Terminated(BaseException):
    """SIGTERM, as preemptible machines and pod schedulers send it (a BaseException, so that no
    handler of a video's failure takes it for one). The CLI's handler raises it in the main
    thread and records it: should it land in a finalizer, which swallows exceptions, long loops
    raise it again at their next step (``check_terminated``)."""


_terminated = False


def terminate(signum=None, frame=None):
    """The SIGTERM handler: records the signal and raises ``Terminated``."""
    global _terminated
    _terminated = True
    raise Terminated


def check_terminated() -> None:
    """Raises ``Terminated`` if SIGTERM came (a loop's safe point)."""
    if _terminated:
        raise Terminated
