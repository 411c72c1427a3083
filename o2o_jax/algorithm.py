"""The Algorithm interface and the registry of methods by name.

An offline-to-online method is one `Algorithm`, built and registered in the file of its
losses (`o2o_jax/agents/<method>.py`): everything the shared loops need to run it, and
nothing of it anywhere else. No loop, config check or experiment script names a method;
they look it up here by `cfg.algo`:

    from o2o_jax import algorithm
    algo = algorithm.get(cfg.algo)      # -> Algorithm
    update = algo.offline_update(cfg)   # pure (member, batch, key) -> (member, info)

Adding a method: write its losses and an `Algorithm(...)` in one file, `register` it, and
add the module to `BUILTIN_MODULES` (or import it yourself before `get`, as a test or a
user package does). Shapes of the pieces:

* `create_members(key, obs_dim, act_dim, cfg)` -> N stacked members [N, ...]
  (`agents.stacking.create`).
* `offline_update(cfg)` -> `update(member, batch, key) -> (member, info)`, one member
  (the offline loop vmaps it over members, and over seeds). The function returned must be
  the same object for the same knobs (build it with `functools.lru_cache`): compiled
  programs are cached by it.
* `post_offline`: an optional second offline phase (`PostOffline`), e.g. FQE-init's critic
  refit.
* `to_online(members, cfg)` -> the online agent; `online_update(cfg)` -> its
  `update(agent, batch, key) -> (agent, info)`.
* `act(agent, obs, key)`, `act_eval(agent, obs)`: actions; `q_value(agent, obs, act)`:
  the Q the AUROC analysis scores; `members_act_eval(members, obs)`: evaluation of the
  offline members.
* `from_data(members, dataset, cfg)` -> members: optional; statistics the method takes
  from the offline dataset (`data.Dataset`) into freshly created members, e.g. IQL's
  reward scale. Called once by the pipeline before pretraining; the values are leaves of
  the members' state, so checkpoints and loaded members carry them.
* `mc_returns`: the method reads `batch["mc_returns"]`, each transition's discounted
  Monte-Carlo return-to-go (discount `agent.discount`; `o2o_jax/mc_returns.py`): offline
  from the dataset, online written when its episode ends (-inf until then).
* `initial_priorities(agent, offline_data)` -> [M]: optional, the offline items'
  starting priorities in the `prioritized` replay (default 1; BAQ's BC divergence).
* `online_start(agent, eval_returns [])` -> agent: optional, once at the start of a fresh
  online phase with the first evaluation's mean return (AdaptiveBC's R-bar);
  `episode_end(agent, return [], length [], ended [] bool)` -> agent: optional, after every
  env step in which an episode ended (unchanged where `ended` is False; AdaptiveBC's
  controller). Both per seed (the loop vmaps them) and pure.
* `config_section`: (name, default_config) of the method's own config section.
  `offline_section_keys`: the keys of that section its pretraining reads (None, the
  default: all of them; () for a section of online settings only, as UPQ's β). Methods
  whose pretraining is the same computation pretrain once in `experiments.compare`.
* `preset`: the paper's settings of the method, dotted config overrides (`apply_preset`).
* `check(cfg)`: the method's config rules (raise `config_checks.ConfigError`).
* `progress_keys`: the info keys the progress line shows.
"""
import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

BUILTIN_MODULES = ("o2o_jax.agents.off2on", "o2o_jax.agents.sac", "o2o_jax.agents.sac_ft",
                   "o2o_jax.agents.cql", "o2o_jax.agents.awac", "o2o_jax.agents.bcq",
                   "o2o_jax.agents.fqe", "o2o_jax.agents.iql",
                   "o2o_jax.agents.pex", "o2o_jax.agents.famo2o",
                   "o2o_jax.agents.calql", "o2o_jax.agents.td3",
                   "o2o_jax.agents.redq", "o2o_jax.agents.prft",
                   "o2o_jax.agents.upq", "o2o_jax.agents.e2o",
                   "o2o_jax.agents.adaptive_bc", "o2o_jax.agents.apl",
                   "o2o_jax.agents.aca", "o2o_jax.agents.baq",
                   "o2o_jax.agents.opt")


@dataclasses.dataclass(frozen=True)
class PostOffline:
    """A phase after pretraining: `reset(members [N, ...], key, cfg)` once, then `steps`
    (a config field, dotted) updates of `update(cfg)` per member, logged as `phase`."""
    phase: str
    label: str
    steps_field: str
    reset: Callable
    update: Callable


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    create_members: Callable
    offline_update: Callable
    to_online: Callable
    online_update: Callable
    act: Callable
    act_eval: Callable
    q_value: Callable
    members_act_eval: Callable
    post_offline: Optional[PostOffline] = None
    from_data: Optional[Callable] = None
    mc_returns: bool = False
    initial_priorities: Optional[Callable] = None
    online_start: Optional[Callable] = None
    episode_end: Optional[Callable] = None
    config_section: Optional[Tuple[str, Callable]] = None
    offline_section_keys: Optional[Tuple[str, ...]] = None
    preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Optional[Callable] = None
    progress_keys: Tuple[str, ...] = ("critic_loss", "q_data")

    def apply_preset(self, cfg):
        """Set `cfg.algo` and the paper's settings of this method on `cfg` (in place)."""
        cfg.algo = self.name
        for dotted, value in self.preset.items():
            node = cfg
            *path, last = dotted.split(".")
            for p in path:
                node = node[p]
            node[last] = value
        return cfg


_REGISTRY: Dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    """Add `algo` under its name (a second registration of a name replaces the first only
    if it is the same object: two methods may not share a name)."""
    old = _REGISTRY.get(algo.name)
    if old is not None and old is not algo:
        raise ValueError(f"an algorithm named {algo.name!r} is already registered "
                         f"({old.summary!r}); pick another name")
    _REGISTRY[algo.name] = algo
    return algo


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def names() -> List[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> Algorithm:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown algo {name!r}; registered: {sorted(_REGISTRY)} (set "
                         "--config.algo, or import the module that registers yours)")
    return _REGISTRY[name]


def all_algorithms() -> List[Algorithm]:
    _load_builtins()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
