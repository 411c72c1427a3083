"""What a transition is, once for the whole library: the arrays of every minibatch.

Datasets (`data.loader`), the offline sampler (`offline`) and the replay buffers
(`replay.buffers`) all hold transitions as a dict of arrays with these keys, each with a
leading transition axis; `dones` is 1 only for a true terminal (a time limit is not one).
"""
TRANSITION_KEYS = ("observations", "actions", "rewards", "next_observations", "dones")
