"""Several processes (usually one per host) extracting one feature store together.

Each process starts JAX's distributed runtime (``initialize``), loads its own replica of the
backbone on its own devices (``load_backbone(..., mesh=make_mesh())``), takes its share of the
videos (``shard_videos``) and extracts it into the shared store directory. The store takes
writers of different videos at once (one file per video, atomic renames), and no collective runs
during extraction, so a slow or broken video never stalls the other processes. The processes
start together (``starting``): should one fail before the work begins (a checkpoint it cannot
read, a folder it does not see), every process stops with one line that names it.
"""

import contextlib
import itertools
import os
import time
from collections.abc import Sequence
from typing import TypeVar

import jax

from headhunt_jax import files
from headhunt_jax.errors import InputError, UserError

T = TypeVar("T")

# initialize() argument -> the environment variable it is read from when not given.
ENV = {
    "coordinator_address": "HEADHUNT_COORDINATOR",
    "num_processes": "HEADHUNT_NUM_PROCESSES",
    "process_id": "HEADHUNT_PROCESS_ID",
}


def _from_env(name: str):
    var = ENV[name]
    value = os.environ.get(var)
    if value is None or name == "coordinator_address":
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{var} must be an integer, got {value!r}") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, int]:
    """Joins this process to the others; returns (process_index, process_count).

    Each argument left None is read from its environment variable (``HEADHUNT_COORDINATOR``
    'host:port' of process 0, ``HEADHUNT_NUM_PROCESSES``, ``HEADHUNT_PROCESS_ID``); what is still
    unset is left to JAX's own detection (Cloud TPU, SLURM, Open MPI). Call it before anything
    else uses JAX. Calling it again returns the same answer.
    """
    if not jax.distributed.is_initialized():
        given = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        kwargs = {k: v if v is not None else _from_env(k) for k, v in given.items()}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            jax.distributed.initialize(**kwargs)
        except ValueError as err:
            if kwargs:
                raise
            raise InputError(
                f"no cluster detected ({err}): outside Cloud TPU, SLURM or Open MPI, give the "
                f"coordinator address, process count and process id, or set "
                f"{', '.join(ENV.values())}"
            ) from None
    return jax.process_index(), jax.process_count()


def shard_videos(
    videos: Sequence[T], process_index: int | None = None, process_count: int | None = None
) -> list[T]:
    """This process's share of ``videos``: every ``process_count``-th, from ``process_index``.

    The videos are sorted by name first, so processes that list the same files in different
    orders still split them the same way; the shares are disjoint, cover every video once and
    differ in size by one at most. Index and count default to JAX's (after ``initialize``).
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise InputError(f"process_index must be in [0, {count}), got {index}")
    ordered = sorted(videos, key=str)
    names = [str(v) for v in ordered]
    repeated = sorted({a for a, b in zip(names, names[1:], strict=False) if a == b})
    if repeated:
        raise InputError(f"videos listed more than once: {', '.join(repeated[:8])}")
    return ordered[index::count]


# How long a process waits for the others to come through their start-up (loading a large
# backbone from a network filesystem takes minutes).
STARTUP_TIMEOUT_S = 1800.0
_STARTED = "headhunt/started"
_OK = "ok"
_rounds = itertools.count()


class ProcessFailed(UserError):
    """Another process of the run failed, or told nothing, before the work began."""


@contextlib.contextmanager
def starting(timeout_s: float | None = None):
    """Around each process's start-up (listing its videos, loading its backbone): the block is
    left only when every process has come through its own, so the work begins in all of them or
    in none. Every process enters it the same number of times.

    Each process tells the others its outcome through JAX's coordination service and waits up to
    ``timeout_s`` (default ``STARTUP_TIMEOUT_S``) for theirs. A process whose block raises tells the first line of its error,
    waits for the others' outcomes, leaves the runtime and raises its error; the others leave
    the runtime too and raise ``ProcessFailed``, "process I of N failed: ERROR" (or "did not
    finish starting within T s"). Leaving the runtime together keeps JAX's health checks from
    aborting the processes that are still running. With one process it only runs the block.
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        yield
        return
    from jax._src.distributed import global_state  # as jax's multihost_utils and orbax reach it

    client, me, count = global_state.client, jax.process_index(), jax.process_count()
    timeout_s = STARTUP_TIMEOUT_S if timeout_s is None else timeout_s
    prefix = f"{_STARTED}/{next(_rounds)}/"
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(jax.errors.JaxRuntimeError):  # its own error is the one to tell
            told = _tell(client, prefix, me, _outcome(error), count, timeout_s)
            _leave(len(told) == count)
        raise
    try:
        told = _tell(client, prefix, me, _OK, count, timeout_s)
    except jax.errors.JaxRuntimeError as e:
        raise ProcessFailed(
            f"lost JAX's coordination service (process 0 of {count}): {files.first_line(e)}"
        ) from None
    silent = [i for i in range(count) if i not in told]
    failed = [i for i in range(count) if told.get(i, _OK) != _OK]
    if failed or silent:
        _leave(not silent)
        if failed:
            others = f" (and process {', '.join(map(str, failed[1:]))})" if failed[1:] else ""
            raise ProcessFailed(f"process {failed[0]} of {count} failed{others}: {told[failed[0]]}")
        raise ProcessFailed(
            f"process {', '.join(map(str, silent))} of {count} did not finish starting within "
            f"{timeout_s:g} s"
        )


def _outcome(error: BaseException) -> str:
    """What the other processes are told of this one's failure: one line."""
    said = files.first_line(error)
    if isinstance(error, UserError):
        return said
    return f"{type(error).__name__}: {said}" if said else type(error).__name__


def _tell(client, prefix: str, me: int, outcome: str, count: int, timeout_s: float):
    """Tells this process's outcome; returns {process: outcome} of those that told theirs, once
    all have or ``timeout_s`` has passed (polled, so that a signal is handled while waiting)."""
    client.key_value_set(prefix + str(me), outcome)
    deadline = time.monotonic() + timeout_s
    while True:
        told = {int(key.rsplit("/", 1)[1]): v for key, v in client.key_value_dir_get(prefix)}
        if len(told) == count or time.monotonic() >= deadline:
            return told
        time.sleep(0.05)


def _leave(together: bool) -> None:
    """Leaves JAX's distributed runtime at its shutdown barrier when every process is leaving
    now (``together``); else stays in it, as the barrier would wait for the processes that told
    nothing (the process ends without it)."""
    if together:
        with contextlib.suppress(jax.errors.JaxRuntimeError):  # the others left first
            jax.distributed.shutdown()
