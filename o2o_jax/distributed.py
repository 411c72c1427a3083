"""Several processes (hosts) as one run, with `jax.distributed`.

Every process runs the same program (JAX's multi-controller model): `jax.devices()` is
then the devices of all hosts, the pipeline's `Sharder` lays its mesh over them, and each
compiled step runs on all of them at once. The host-side work is repeated on every
process: each steps all S seeds' environments, fed with the actions gathered from the
devices (`to_host`), so every process holds the same observations and the same keys. Only
the primary process (index 0) writes the run directory and prints; checkpoints are
gathered to host memory on every process and written once (a filesystem every host sees
is assumed, as for any multi-host run directory).

Config (`distributed` section): `coordinator_address` "host:port" of process 0 ("" for
a single process), `num_processes`, `process_id`; or `auto=True` to let JAX read them from
the cluster (SLURM, Open MPI, Kubernetes, TPU pods).
"""
import contextlib
import os
import sys
from typing import Callable

import jax
import numpy as np


def initialize(dc) -> None:
    """Join the processes of a distributed run (no-op for a single process or when done)."""
    if dc is None or not (dc.auto or dc.coordinator_address) or \
            jax.distributed.is_initialized():
        return
    # CPU devices need a collectives library to talk across processes; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if dc.auto:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=dc.coordinator_address,
                                       num_processes=dc.num_processes,
                                       process_id=dc.process_id)
    except (ValueError, RuntimeError) as e:
        how = ("distributed.auto=True found no cluster it knows (SLURM, Open MPI, Kubernetes, "
               "TPU pods); give distributed.coordinator_address, num_processes and "
               "process_id instead" if dc.auto else
               f"could not join {dc.num_processes} processes at "
               f"{dc.coordinator_address!r} as process {dc.process_id}: start the same "
               "command on every host with its own process_id, process 0 on the "
               "coordinator's host, within JAX's start-up timeout (5 min)")
        raise RuntimeError(f"{how} ({type(e).__name__}: {e})") from e


def multiprocess() -> bool:
    return jax.process_count() > 1


def is_primary() -> bool:
    return jax.process_index() == 0


def to_host(x) -> np.ndarray:
    """A device array as a NumPy array on every process (gathered across processes when
    its shards live on several hosts)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def to_host_tree(tree):
    return jax.tree_util.tree_map(to_host, tree)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op for one process)."""
    if multiprocess():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def broadcast_str(text: str, max_bytes: int = 4096) -> str:
    """Process 0's `text` on every process (e.g. a run directory named by the clock)."""
    if not multiprocess():
        return text
    from jax.experimental import multihost_utils
    raw = text.encode()
    if len(raw) > max_bytes:
        raise ValueError(f"{text[:80]!r}... is longer than {max_bytes} bytes")
    buf = np.frombuffer(raw.ljust(max_bytes, b"\0"), np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out.astype(np.uint8)).rstrip(b"\0").decode()


def agree(value_fn: Callable[[], str], what: str, fix: str) -> None:
    """In a distributed run, stop unless every process sees the same `value_fn()` of
    `what` (evaluated only then). Raised where it differs; the others stop with the run."""
    if not multiprocess():
        return
    value = value_fn()
    primary = broadcast_str(value)
    if value != primary:
        raise RuntimeError(f"process {jax.process_index()} sees {what} as {value!r}, process "
                           f"0 as {primary!r}; {fix}")


@contextlib.contextmanager
def primary_output():
    """Silence stdout/stderr on processes other than the primary (their errors still
    propagate as exceptions and are printed once this context exits)."""
    if is_primary():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        yield
    sys.stdout.flush()
