"""Several processes (usually one per host) extracting one feature store together.

Each process starts JAX's distributed runtime (``initialize``), loads its own replica of the
backbone on its own devices (``load_backbone(..., mesh=make_mesh())``), takes its share of the
videos (``shard_videos``) and extracts it into the shared store directory. The store takes
writers of different videos at once (one file per video, atomic renames), and no collective runs
during extraction, so a slow or broken video never stalls the other processes.
"""

import os
from collections.abc import Sequence
from typing import TypeVar

import jax

from headhunt_jax.errors import InputError

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
