"""Members pretrained by rlkit (the Off2OnRL authors' PyTorch code) as our stacked members.

The authors publish their CQL members as PyTorch `state_dict`s, one folder per member seed:
`<source>/<name>_seed<k>/{actor,critic1,critic2}_<steps>.pt` with
* actor (rlkit `TanhGaussianPolicy`): `fc0`, `fc1`, ... (ReLU), `last_fc` (pre-tanh mean)
  and `last_fc_log_std` (log-std, clamped to [-20, 2] by their code);
* critic1, critic2 (rlkit `ConcatMlp`): `fc0`, `fc1`, ... on concat(obs, act), `last_fc`.
torch's Linear holds `weight` as [out, in] (y = x W^T + b); flax's Dense holds its kernel as
[in, out], so every weight is transposed.

`import_members` turns them into the [N, ...] members that `ensemble.create_members` makes
(critics -> our twin critic, targets = copies of the critics); everything the files do not
hold (temperatures, optimizer states, the CQL multiplier) is fresh, as the authors' online
code starts it. Every shape is checked against the config's networks first.

torch is needed only to read the files (`pip install -e ".[reference]"`); it is imported here
and nowhere else in the package.
"""
import glob
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

ROLES = ("actor", "critic1", "critic2")


class MemberFileError(ValueError):
    """Bad or mismatching input files (named in the message, with the fix)."""


def _torch():
    try:
        import torch
    except ImportError as e:   # pragma: no cover - depends on the environment
        raise MemberFileError(
            "reading PyTorch .pt files needs torch: pip install -e \".[reference]\" (the CPU "
            "build, torch==2.13.0)") from e
    return torch


def find_members(source: str, steps: Optional[int] = None) -> Tuple[List[Tuple[int, Dict[str, str]]], int]:
    """[(member seed, {role: path})] sorted by seed, and the training step of the files.

    `steps`: the `<steps>` of the file names; None takes the largest that every member has.
    """
    if not os.path.isdir(source):
        raise MemberFileError(f"--source {source!r} is not a folder; point it at the folder "
                           "holding the <name>_seed<k>/ member folders")
    folders = []
    for d in glob.glob(os.path.join(source, "*_seed*")):
        m = re.search(r"_seed(\d+)$", d)
        if m and os.path.isdir(d):
            folders.append((int(m.group(1)), d))
    if not folders:
        raise MemberFileError(f"no <name>_seed<k>/ member folders in {source!r}; the authors' "
                           "layout is <source>/halfcheetah-medium-v0_seed0/actor_1000000.pt")
    folders.sort()

    def steps_of(d):
        found = []
        for role in ROLES:
            found.append({int(m.group(1)) for f in os.listdir(d)
                          if (m := re.fullmatch(rf"{role}_(\d+)\.pt", f))})
        return set.intersection(*found)

    common = set.intersection(*(steps_of(d) for _, d in folders))
    if steps is None:
        if not common:
            raise MemberFileError(
                f"the member folders in {source!r} share no step with all of "
                f"{[r + '_<steps>.pt' for r in ROLES]}; check that every member folder "
                "holds its actor and both critics")
        steps = max(common)
    elif steps not in common:
        raise MemberFileError(f"not every member folder in {source!r} has "
                           f"{{actor,critic1,critic2}}_{steps}.pt (steps every member has: "
                           f"{sorted(common)}); pass one of those as --steps")
    return [(seed, {r: os.path.join(d, f"{r}_{steps}.pt") for r in ROLES})
            for seed, d in folders], steps


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """A torch state_dict as float32 NumPy arrays."""
    torch = _torch()
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise MemberFileError(f"{path!r} is not a readable PyTorch state_dict ({type(e).__name__}:"
                           f" {str(e)[:200]}); re-copy the file") from e
    if not isinstance(sd, dict):
        raise MemberFileError(f"{path!r} holds a {type(sd).__name__}, not a state_dict")
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in sd.items()}


def _expect_layers(sd: Dict[str, np.ndarray], path: str, layers: Sequence[Tuple[str, int, int]]):
    """Check that `sd` holds exactly `layers` = [(name, out, in)] as torch Linear weights."""
    want = {f"{n}.weight": (o, i) for n, o, i in layers}
    want.update({f"{n}.bias": (o,) for n, o, _ in layers})
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        raise MemberFileError(
            f"{path!r} does not match the config's networks: missing {missing}, unexpected "
            f"{extra}; expected the layers {[n for n, _, _ in layers]} (rlkit's names). Set "
            "the config's agent.hidden_dims to the networks the files were trained with")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise MemberFileError(
                f"{path!r}: {k} has shape {tuple(sd[k].shape)}, expected {shape} ([out, in] "
                "for torch weights) from the config's networks; set agent.hidden_dims (and "
                "--env) to what the files were trained with")


def _dense(sd, name):
    return {"kernel": jnp.asarray(sd[f"{name}.weight"].T), "bias": jnp.asarray(sd[f"{name}.bias"])}


def actor_params(sd: Dict[str, np.ndarray], path: str, obs_dim: int, act_dim: int,
                 hidden_dims: Sequence[int]) -> dict:
    """Our `TanhGaussianActor` parameters from an rlkit `TanhGaussianPolicy` state_dict."""
    dims = [obs_dim] + list(hidden_dims)
    layers = [(f"fc{i}", dims[i + 1], dims[i]) for i in range(len(hidden_dims))]
    layers += [("last_fc", act_dim, dims[-1]), ("last_fc_log_std", act_dim, dims[-1])]
    _expect_layers(sd, path, layers)
    return {"MLP_0": {f"Dense_{i}": _dense(sd, f"fc{i}") for i in range(len(hidden_dims))},
            "mean": _dense(sd, "last_fc"), "log_std": _dense(sd, "last_fc_log_std")}


def critic_params(sds: Sequence[Dict[str, np.ndarray]], paths: Sequence[str], obs_dim: int,
                  act_dim: int, hidden_dims: Sequence[int]) -> dict:
    """Our `TwinCritic` parameters (twin axis first) from rlkit critic1, critic2 state_dicts."""
    dims = [obs_dim + act_dim] + list(hidden_dims)
    layers = [(f"fc{i}", dims[i + 1], dims[i]) for i in range(len(hidden_dims))]
    layers += [("last_fc", 1, dims[-1])]
    singles = []
    for sd, path in zip(sds, paths):
        _expect_layers(sd, path, layers)
        singles.append({"MLP_0": {f"Dense_{i}": _dense(sd, f"fc{i}")
                                  for i in range(len(hidden_dims))},
                        "Dense_0": _dense(sd, "last_fc")})
    return {"VmapCritic_0": jax.tree_util.tree_map(lambda *x: jnp.stack(x), *singles)}


def check_config(agent_cfg) -> None:
    """The config's networks must be rlkit's: ReLU, no LayerNorm, no mean clip."""
    problems = []
    if agent_cfg.activation != "relu":
        problems.append(f"agent.activation={agent_cfg.activation!r} (rlkit: 'relu')")
    if agent_cfg.actor_layer_norm or agent_cfg.critic_layer_norm:
        problems.append("agent.*_layer_norm=True (rlkit: no LayerNorm)")
    if agent_cfg.mean_clip is not None:
        problems.append(f"agent.mean_clip={agent_cfg.mean_clip} (rlkit's policy: none)")
    if problems:
        raise MemberFileError("the config's networks differ from rlkit's: " + "; ".join(problems)
                           + "; use a config with rlkit's networks (e.g. "
                           "configs/halfcheetah_medium.py:reference)")


def import_members(source: str, members, obs_dim: int, act_dim: int, hidden_dims,
                   member_ids: Optional[Sequence[int]] = None, steps: Optional[int] = None):
    """`members` ([N, ...] fresh stacked members, e.g. from `create_members`; actor-critics
    or CQL agents) with actor, critic and target-critic parameters replaced by the files'. `member_ids`: which of the
    sorted member folders to take (default: all; their count must be N). Returns
    (members, provenance dict)."""
    found, steps = find_members(source, steps)
    ids = list(range(len(found))) if member_ids is None else list(member_ids)
    bad = [i for i in ids if not 0 <= i < len(found)]
    if bad:
        raise MemberFileError(f"member index {bad} out of range: {source!r} has {len(found)} "
                           f"members (seeds {[s for s, _ in found]}); use 0..{len(found) - 1}")
    wrapper, members = members, getattr(members, "ac", members)   # CQL members: their .ac
    n = jax.tree_util.tree_leaves(members.actor.params)[0].shape[0]
    if len(ids) != n:
        raise MemberFileError(f"{len(ids)} members selected but the config has "
                           f"agent.num_members={n}; make them equal")
    actors, critics = [], []
    for i in ids:
        paths = found[i][1]
        actors.append(actor_params(load_state_dict(paths["actor"]), paths["actor"], obs_dim,
                                   act_dim, hidden_dims))
        sds = [load_state_dict(paths[r]) for r in ("critic1", "critic2")]
        critics.append(critic_params(sds, [paths["critic1"], paths["critic2"]], obs_dim,
                                     act_dim, hidden_dims))
    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    actor_p, critic_p = stack(actors), stack(critics)
    for name, new, old in (("actor", actor_p, members.actor.params),
                           ("critic", critic_p, members.critic.params)):
        if (jax.tree_util.tree_structure(new) != jax.tree_util.tree_structure(old) or
                any(a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(new),
                                                       jax.tree_util.tree_leaves(old)))):
            raise MemberFileError(f"converted {name} parameters do not fit the config's {name} "
                               "network; check agent.hidden_dims against the files")
    members = members.replace(
        actor=members.actor.replace(params=actor_p),
        critic=members.critic.replace(params=critic_p),
        target_critic_params=jax.tree_util.tree_map(jnp.copy, critic_p))
    if wrapper is not members and hasattr(wrapper, "ac"):
        members = wrapper.replace(ac=members)
    provenance = {"source": os.path.abspath(source), "steps": steps,
                  "member_seeds": [found[i][0] for i in ids],
                  "files": [found[i][1] for i in ids]}
    return members, provenance
