"""`make_dataset --members`: a members checkpoint (as the pipeline and
experiments.import_members write it: CQL states, one seed) is read back with its
algorithm's state type and rolled out through pi_E; the dataset loads and names them."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import hopper_medium
from experiments import make_dataset
from o2o_jax import algorithm, checkpoints
from o2o_jax.agents import ensemble
from o2o_jax.data import loader, recipes

from helpers import ACT, OBS


def _members_checkpoint(path):
    cfg = hopper_medium.get_config("quick")
    cfg.agent.hidden_dims, cfg.agent.num_members, cfg.num_seeds = (8, 8), 2, 1
    members = algorithm.get("off2on").create_members(jax.random.PRNGKey(3), OBS, ACT, cfg)
    # Move the actors' means apart, so that pi_E's moments differ from any one member's.
    members = members.replace(ac=members.ac.replace(actor=members.ac.actor.replace(
        params=jax.tree_util.tree_map(lambda x: x * 3.0, members.ac.actor.params))))
    checkpoints.save(str(path), jax.tree_util.tree_map(lambda x: x[None], members),
                     checkpoints.members_meta(cfg, OBS, ACT))
    return members


def test_members_policy_is_the_saved_members_ensemble(tmp_path):
    members = _members_checkpoint(tmp_path / "members")
    sample, n, info = make_dataset.load_members("hopper", str(tmp_path / "members"))
    assert n == 2 and info["algo"] == "off2on"
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(64, OBS)), jnp.float32)
    key = jax.random.PRNGKey(7)
    # Independently: the saved members' moment-matched policy (eq. 5), sampled with the
    # same key, from the in-memory members (not the checkpoint).
    expected = ensemble.members_policy_ensemble(members.ac, obs, key)
    np.testing.assert_allclose(np.asarray(sample(obs, key)), np.asarray(expected),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(sample(obs, key)),
                           np.asarray(sample(obs, jax.random.PRNGKey(8))))


def test_members_dataset_builds_loads_and_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _members_checkpoint(tmp_path / "members")
    sample, n, info = make_dataset.load_members("hopper", str(tmp_path / "members"))
    b = recipes.make_budget(transitions=200, num_envs=4)
    ds_id = recipes.build_from_members("hopper", sample, n, "o2o/hopper/test-members-v0", b,
                                       info=info, log=lambda m: None)
    ds = loader.load(ds_id, env_name="hopper")
    assert ds.num_transitions == 200
    assert np.all(np.abs(ds.arrays["actions"]) <= 1.0)
    policy = ds.metadata["o2o_policy"]
    assert policy["members"] == str(tmp_path / "members") and policy["algo"] == "off2on"
    # The recorded behaviour return: the mean reward sum of the episodes that ended by
    # termination (tiny random-ish hopper policies fall within 200 steps).
    starts, ends = ds.episode_bounds()
    complete = [ds.arrays["rewards"][s:e].astype(np.float64).sum()
                for s, e in zip(starts, ends) if ds.arrays["dones"][e - 1] > 0]
    assert complete
    np.testing.assert_allclose(ds.metadata["o2o_behavior_return"], np.mean(complete),
                               rtol=1e-4)
