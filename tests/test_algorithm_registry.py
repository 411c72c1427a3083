"""Adding a method touches nothing else: a toy algorithm written and registered in this one
file runs through the pipeline of experiments.train, with its own config section, preset
and config rule; and the registry refuses clashes and unknown names."""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from o2o_jax import algorithm, config_checks, pipeline
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import ensemble
from o2o_jax import distributions as dist
from tests.helpers import read_rows, tiny_config


# ------------------------------------------------------------------ the toy method's file

def toy_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.bc_weight = 1.0
    return c


def bc_update(agent, batch, key, bc_weight: float):
    """Behaviour cloning of the actor only: -bc_weight * mean log pi(a_data|s)."""
    del key

    def loss_fn(params):
        mean, log_std = ac.policy(agent, params, batch["observations"])
        return -bc_weight * jnp.mean(dist.log_prob(mean, log_std, batch["actions"]))

    loss, grads = jax.value_and_grad(loss_fn)(agent.actor.params)
    return agent.replace(actor=agent.actor.apply_gradients(grads=grads)), {"toy_bc_loss": loss}


@functools.lru_cache(maxsize=None)
def _make(bc_weight: float):
    return functools.partial(bc_update, bc_weight=bc_weight)


def make_update(cfg):
    return _make(float(cfg.toy_bc.bc_weight))


def check(cfg):
    config_checks.require(cfg, "toy_bc.bc_weight", cfg.toy_bc.bc_weight > 0,
                          "must be > 0 for algo 'toy_bc'")


TOY = algorithm.Algorithm(
    name="toy_bc", summary="behaviour cloning offline and online (a test of the registry)",
    create_members=ensemble.members_from_config, offline_update=make_update,
    to_online=ensemble.to_online, online_update=make_update, act=ensemble.act,
    act_eval=ensemble.act_eval, q_value=ensemble.q_ens,
    members_act_eval=ensemble.members_policy_ensemble,
    config_section=("toy_bc", toy_config), preset={"online.replay": "uniform"},
    check=check, progress_keys=("toy_bc_loss",))


# ------------------------------------------------------------------ the tests

@pytest.fixture
def registered():
    algorithm.register(TOY)
    yield TOY
    algorithm._REGISTRY.pop("toy_bc", None)


def test_a_method_from_one_file_runs_through_the_pipeline(minari_root, tmp_path, registered):
    cfg = tiny_config(tmp_path, "toy")            # the base config now has toy_bc's section
    assert cfg.toy_bc.bc_weight == 1.0
    registered.apply_preset(cfg)
    assert cfg.algo == "toy_bc" and cfg.online.replay == "uniform"
    cfg.online.epochs = 2
    summary = pipeline.run(cfg)
    assert np.isfinite(summary["final"]["per_seed_return"]).all()
    rows = read_rows(os.path.join(tmp_path, "toy"))
    offline = [r for r in rows if r["phase"] == "offline"]
    online = [r for r in rows if r["phase"] == "online" and r["offline_fraction"]]
    assert offline and online
    # Its own update ran in both phases (its info key, no SAC/CQL keys)...
    assert all(r["toy_bc_loss"] for r in offline + online)
    assert not any(r.get("critic_loss") for r in offline + online)
    # ... and did what it says: the offline BC loss fell.
    first, last = float(offline[0]["toy_bc_loss"]), float(offline[-1]["toy_bc_loss"])
    assert last < first
    # Its config rule is enforced with the others.
    cfg.toy_bc.bc_weight = 0.0
    with pytest.raises(config_checks.ConfigError, match="toy_bc.bc_weight"):
        config_checks.check(cfg)


def test_registry_refuses_clashes_and_unknown_names(registered):
    assert "toy_bc" in algorithm.names() and algorithm.get("toy_bc") is TOY
    algorithm.register(TOY)                        # the same object again: fine
    with pytest.raises(ValueError, match="already registered"):
        algorithm.register(dataclasses.replace(TOY, summary="another"))
    with pytest.raises(ValueError, match="unknown algo 'nope'"):
        algorithm.get("nope")


def test_every_builtin_method_is_complete():
    for algo in algorithm.all_algorithms():
        for field in ("create_members", "offline_update", "to_online", "online_update",
                      "act", "act_eval", "q_value", "members_act_eval"):
            assert callable(getattr(algo, field)), (algo.name, field)
        # Its builders return the same function for the same config (compiled programs
        # are cached by it).
        from configs import base
        c = base.get_config()
        algo.apply_preset(c)
        assert algo.offline_update(c) is algo.offline_update(c)
        assert algo.online_update(c) is algo.online_update(c)
        config_checks.check(c)
