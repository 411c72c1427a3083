"""experiments.td_errors: the per-leaf squared TD errors are the terms of the critic loss
the update minimises, the per-member summary matches a hand computation, and the command
reads a tiny run's online checkpoints."""
import os

import jax
import numpy as np
import pytest

from experiments import td_errors
from o2o_jax.agents import ensemble, sac
from tests.helpers import random_batch, tiny_config

OBS, ACT, B, N = 4, 2, 16, 3


def test_squared_errors_are_the_critic_loss_terms(tiny_agent_cfg):
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, N)
    agent = ensemble.to_ensemble(members, backup_entropy=True)
    agent = agent.replace(target_critic_params=jax.tree_util.tree_map(
        lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
        agent.target_critic_params))          # targets differ from the critics
    batch, key = random_batch(2, B, OBS, ACT), jax.random.PRNGKey(5)
    k_target, _ = jax.random.split(key)       # as sac.critic_loss splits its key
    sq = np.asarray(td_errors.squared_td_errors(agent, batch, k_target), np.float64)
    assert sq.shape == (N, 2, B)
    _, info = sac.critic_loss(agent.critic.params, agent, batch, key)
    np.testing.assert_allclose(sq.mean(axis=-1).sum(), float(info["critic_loss"]), rtol=1e-5)


def test_summary_by_hand():
    # 1 member, 2 twins, 4 leaves; priorities 1, 1, 2, 4 (leaf 3 online, counted twice).
    sq = np.array([[[1.0, 0.0, 2.0, 8.0], [1.0, 2.0, 0.0, 0.0]]])
    prio = np.array([1.0, 1.0, 2.0, 4.0])
    online = np.array([False, False, False, True])
    counts = np.array([1.0, 1.0, 1.0, 2.0])
    (row,) = td_errors.summarize(sq, prio, online, counts, top=0.25)
    w = np.array([1.0, 1.0, 2.0, 8.0]) / 12.0          # priority x count, normalised
    parts = w * np.array([2.0, 2.0, 2.0, 8.0])          # twins summed
    assert row["loss_expected"] == pytest.approx(parts.sum())        # (2+2+4+64)/12 = 6
    assert row["loss_expected"] == pytest.approx(6.0)
    assert row["online_share"] == pytest.approx(64 / 72)
    assert np.isnan(row["top_share"])                  # not defined with counts
    assert row["sq_max"] == 8.0
    # Every leaf evaluated: the top share; and the exact total mass when given.
    (row,) = td_errors.summarize(sq, prio, online, top=0.25)
    parts = np.array([1.0, 1.0, 2.0, 4.0]) / 8.0 * np.array([2.0, 2.0, 2.0, 8.0])
    assert row["top_share"] == pytest.approx(parts[3] / parts.sum())   # 1 largest of 4
    (half,) = td_errors.summarize(sq, prio, online, top=0.25, total_mass=16.0)
    assert half["loss_expected"] == pytest.approx(row["loss_expected"] / 2)
    # Two members: each row sees only its own errors.
    rows = td_errors.summarize(np.concatenate([sq, 2 * sq]), prio, online, top=0.5)
    assert rows[1]["loss_expected"] == pytest.approx(2 * rows[0]["loss_expected"])
    assert rows[0]["top_share"] == pytest.approx((parts[3] + parts[2]) / parts.sum())


def test_leaf_priorities_are_the_sum_tree_leaves():
    """Raw tree nodes -> the M offline leaves and the valid online slots, in leaf order,
    as sum_tree.leaves reads them (also after the online ring wraps)."""
    from o2o_jax.replay import buffers, sum_tree
    m, cap = 5, 4
    example = {k: v[0] for k, v in random_batch(0, 1, OBS, ACT).items()}
    state = buffers.init(m, cap, example)
    for n, seed in ((3, 1), (3, 2)):             # 6 added to 4 slots: wraps
        state = buffers.add_online(state, random_batch(seed, n, OBS, ACT))
    state = buffers.set_priorities(state, np.arange(m + cap), np.arange(1.0, m + cap + 1))
    raw = {"tree": {"nodes": np.asarray(state.tree.nodes)},
           "online": {"size": np.asarray(state.online.size),
                      "data": {"rewards": np.asarray(state.online.data["rewards"])}}}
    np.testing.assert_array_equal(td_errors.leaf_priorities(raw, m),
                                  np.asarray(sum_tree.leaves(state.tree)))
    with pytest.raises(ValueError, match="does not fit 13 offline"):   # 13 + 4 > 16 slots
        td_errors.leaf_priorities(raw, 13)


def test_command_on_a_tiny_run(tmp_path, capsys):
    from o2o_jax import pipeline
    pipeline.run(tiny_config(tmp_path, "run", **{"checkpoint.keep": 5}))
    run = os.path.join(tmp_path, "run")
    found = td_errors.online_checkpoints(run)
    assert sorted(found) == [1, 2]                      # saved after epochs 0 and 1 of 3
    out = os.path.join(tmp_path, "td.csv")
    assert td_errors.main([run, "--epochs=2", f"--csv={out}"]) == 0
    text = capsys.readouterr().out
    assert "epoch 2" in text and "critic_loss under the checkpoint's sampling" in text
    import csv
    rows = list(csv.DictReader(open(out)))
    assert [int(r["member"]) for r in rows] == [0, 1]   # the tiny run's 2 members
    for r in rows:
        assert 0.0 <= float(r["online_share"]) <= 1.0
        assert float(r["loss_expected"]) > 0.0
        # 1500 offline transitions; 2 epochs x 40 env steps (+ the seed share) online.
        assert int(r["offline"]) == 1500 and int(r["online"]) >= 80
    # The restored agent carries the checkpoint's critic, not the template's fresh one.
    import orbax.checkpoint as ocp
    _, agent, _ = td_errors._restore_agent(run, found[2], 0)
    raw = ocp.StandardCheckpointer().restore(os.path.join(found[2], "state"))
    saved = raw["state"]["agent"]["critic"]["params"]
    for a, b in zip(jax.tree_util.tree_leaves(agent.critic.params),
                    jax.tree_util.tree_leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[0])
    # The stride estimate counts each evaluated offline leaf k times: close to the whole.
    out3 = os.path.join(tmp_path, "td3.csv")
    assert td_errors.main([run, "--epochs=2", "--offline_stride=3", f"--csv={out3}"]) == 0
    rows3 = list(csv.DictReader(open(out3)))
    for r, r3 in zip(rows, rows3):
        assert float(r3["loss_expected"]) == pytest.approx(float(r["loss_expected"]), rel=0.3)
        assert r3["top_share"] == "nan" and int(r3["offline_stride"]) == 3
    assert td_errors.main([run, "--epochs=7"]) == 2
    assert "no online checkpoint at epoch(s) [7]" in capsys.readouterr().err
