"""Placing seed-stacked state on a device mesh: seeds split over devices (or, with one seed,
an ensemble's members). Placement only steers XLA's partitioner."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o2o_jax import online


class Sharder:
    """Places seed-stacked state on a device mesh (identity on 1 device).

    Seeds are split over the devices (the largest count dividing `num_seeds`, taken
    evenly from every process's devices in a distributed run); with a
    single seed the ensemble members are split instead (axis 1 of every member-stacked
    leaf of the agent, named explicitly by a member mask; buffers, density-ratio net and
    shared scalars are replicated).
    Placement only steers XLA's partitioner: the numbers are those of one device up to
    the order of float reductions across devices.
    """

    def __init__(self, num_seeds: int, enabled: bool = True, num_members: int = 1):
        devices = jax.devices()
        self.mesh, self.axis = None, None
        procs = jax.process_count()
        by_process = [[d for d in devices if d.process_index == p] for p in range(procs)]

        def usable(count):
            # Every process holds the same number of the mesh's devices: a process with
            # none of them could not read the results it has to act on.
            return max((d for d in range(1, len(devices) + 1) if count % d == 0
                        and d % procs == 0 and d // procs <= min(map(len, by_process))),
                       default=1)

        def mesh(n, axis):
            return Mesh(np.array([d for local in by_process for d in local[:n // procs]]),
                        (axis,))

        n = usable(num_seeds if num_seeds > 1 else num_members) if enabled else 1
        if n > 1:
            self.axis = "seed" if num_seeds > 1 else "member"
            self.mesh = mesh(n, self.axis)
        if len(devices) == 1:
            return
        if n == 1 and procs > 1:
            print(f"[shard] not sharded: each of the {procs} processes computes the whole run"
                  + (" (shard_seeds=False)" if not enabled else
                     f" (no split of {max(num_seeds, num_members)} over the same number of "
                     "devices on every process)"))
        elif not enabled:
            return
        elif num_seeds > 1:
            if n < len(devices):
                print(f"[shard] {num_seeds} seeds over {n} of {len(devices)} devices (a "
                      "multiple of the device count would use them all)")
        else:
            print(f"[shard] 1 seed: its {num_members} ensemble member(s) split over {n} of "
                  f"{len(devices)} devices (several seeds, --config.num_seeds, would use "
                  "them better)" if n < len(devices) else
                  f"[shard] 1 seed: its {num_members} ensemble members split over "
                  f"{n} devices")

    def seeds(self, tree, member_mask=None):
        """Place seed-stacked state: offline members (every leaf [S, N, ...]) or the online
        state. With one seed split by member, the online agent's member-stacked leaves
        are named by `member_mask` (a bool per leaf of the agent without its seed axis,
        `stacking.member_mask`): those are split on their member axis (axis 1), the rest
        (shared temperature, counters, buffers, density-ratio net) replicated."""
        if self.mesh is None:
            return tree
        if self.axis == "seed":
            return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec("seed")))
        by_member = NamedSharding(self.mesh, PartitionSpec(None, "member"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        if isinstance(tree, online.OnlineState):
            if member_mask is None:
                raise ValueError("placing an online state by member needs its agent's "
                                 "member_mask (stacking.member_mask)")
            agent = jax.tree_util.tree_map(
                lambda x, stacked: jax.device_put(x, by_member if stacked else replicated),
                tree.agent, member_mask)
            return jax.device_put(tree, replicated).replace(agent=agent)
        return jax.device_put(tree, by_member)   # offline members: every leaf [S, N, ...]

    def shared(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))
