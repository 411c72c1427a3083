"""Monte-Carlo returns-to-go per transition, for the methods that read them (Cal-QL's
reference value V^mu), as the batch field `mc_returns`.

* Offline: from the dataset's episodes (`data.Dataset.returns_to_go`, the tail after a
  truncation cut off: zero, the Cal-QL reference's convention).
* Online: a transition's return-to-go is only known once its episode ends. Online
  transitions enter the replay with `UNKNOWN` (-inf: a floor max(Q, -inf) = Q does
  nothing) and `PendingEpisodes` writes the real values into their replay slots when the
  episode ends, by termination or time limit alike (the same zero tail).
"""
from typing import List, Optional, Tuple

import numpy as np

KEY = "mc_returns"
UNKNOWN = -np.inf


def returns_to_go(rewards, discount: float) -> np.ndarray:
    """G_t = r_t + discount G_{t+1} over one finished episode, G after its end = 0
    (float64 recursion, float32 out)."""
    rewards = np.asarray(rewards, np.float64)
    out = np.empty_like(rewards)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + discount * g
        out[t] = g
    return out.astype(np.float32)


class PendingEpisodes:
    """Per seed, the replay slots and rewards of the episode under way; when it ends, its
    returns-to-go become writes (slot, value) collected by `take_writes`."""

    def __init__(self, num_seeds: int, discount: float, state: Optional[dict] = None):
        self.discount = float(discount)
        self.slots: List[List[int]] = [[] for _ in range(num_seeds)]
        self.rewards: List[List[float]] = [[] for _ in range(num_seeds)]
        self.ready: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(num_seeds)]
        if state is not None:
            self.slots = [list(map(int, s)) for s in state["slots"]]
            self.rewards = [list(map(float, r)) for r in state["rewards"]]

    def add(self, slot: int, rewards, ended) -> None:
        """One env step of every seed: its transitions went to replay slot `slot`;
        `ended[s]`: seed s's episode ended with this step."""
        for s, (r, done) in enumerate(zip(np.asarray(rewards), np.asarray(ended))):
            self.slots[s].append(int(slot))
            self.rewards[s].append(float(r))
            if done:
                self.ready[s].append((np.asarray(self.slots[s], np.int32),
                                      returns_to_go(self.rewards[s], self.discount)))
                self.slots[s], self.rewards[s] = [], []

    def take_writes(self, pad_slot: int, bucket: int = 1):
        """(slots [S, P] int32, values [S, P] float32) of every finished episode since the
        last call, padded with `pad_slot` (out of range: the write drops it) to a width P
        that is a multiple of `bucket` (few distinct shapes: few compilations); None if
        none finished."""
        counts = [sum(len(sl) for sl, _ in r) for r in self.ready]
        if max(counts) == 0:
            return None
        width = -(-max(counts) // bucket) * bucket
        slots = np.full((len(self.ready), width), pad_slot, np.int32)
        values = np.zeros((len(self.ready), width), np.float32)
        for s, r in enumerate(self.ready):
            if r:
                slots[s, :counts[s]] = np.concatenate([sl for sl, _ in r])
                values[s, :counts[s]] = np.concatenate([v for _, v in r])
        self.ready = [[] for _ in self.ready]
        return slots, values

    def state(self) -> dict:
        """The episodes under way (finished ones are written every epoch), for a
        checkpoint: `PendingEpisodes(S, discount, state)` continues from it."""
        return {"slots": self.slots, "rewards": self.rewards}
