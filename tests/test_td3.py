"""TD3 and TD3+BC against NumPy on fixed parameters: the smoothed target, the policy
delay, TD3+BC's lambda at the policy's actions, the state normaliser; and a TD3+BC run
resumed from its checkpoint (the normaliser rides in it)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import algorithm
from o2o_jax.agents import td3
from tests import numpy_ref as ref
from tests.helpers import random_batch, resumed_rows_match

OBS, ACT, B = 4, 2, 16


def _np(x):
    return np.asarray(x, np.float64)


def np_mu(state, params, obs):
    mlp_p = params["MLP_0"]
    layers = [(_np(mlp_p[f"Dense_{i}"]["kernel"]), _np(mlp_p[f"Dense_{i}"]["bias"]))
              for i in range(len(mlp_p))]
    layers.append((_np(params["mu"]["kernel"]), _np(params["mu"]["bias"])))
    x = (_np(obs) - _np(state.obs_mean)) / _np(state.obs_std)
    return np.tanh(ref.mlp(layers, x))


def _same_tree(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                     jax.tree_util.tree_leaves(b)))


def np_q(state, params, obs, act):
    return ref.critic(params, (_np(obs) - _np(state.obs_mean)) / _np(state.obs_std), act)


@pytest.fixture(scope="module", params=[False, True], ids=["td3", "td3_bc"])
def agent(request):
    from configs import base
    c = base.get_config().td3
    c.hidden_dims = (16, 16)
    s = jax.jit(lambda k: td3.create(k, OBS, ACT, c, "td3_bc" if request.param else "td3"))(
        jax.random.PRNGKey(0))
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    perturb = lambda t, k: jax.tree_util.tree_map(   # noqa: E731
        lambda x: x + 0.2 * jax.random.normal(k, x.shape), t)
    return s.replace(target_actor_params=perturb(s.target_actor_params, k1),
                     target_critic_params=perturb(s.target_critic_params, k2),
                     obs_mean=jnp.array([0.5, -1.0, 0.0, 2.0]),
                     obs_std=jnp.array([1.5, 0.5, 1.0, 3.0]))


def test_smoothed_target_and_critic_loss_match_numpy(agent):
    batch, key = random_batch(2, B, OBS, ACT), jax.random.PRNGKey(3)
    # Noise large enough that both clips bind somewhere.
    a = agent.replace(policy_noise=0.6, noise_clip=0.5)
    loss, info = td3.critic_loss(a.critic.params, a, batch, key)
    eps = np.clip(0.6 * _np(jax.random.normal(key, (B, ACT))), -0.5, 0.5)
    assert np.any(np.abs(eps) == 0.5)
    a_next = np.clip(np_mu(a, a.target_actor_params, batch["next_observations"]) + eps, -1, 1)
    y = _np(batch["rewards"]) + 0.99 * (1 - _np(batch["dones"])) * np_q(
        a, a.target_critic_params, batch["next_observations"], a_next).min(0)
    q = np_q(a, a.critic.params, batch["observations"], batch["actions"])
    np.testing.assert_allclose(info["q_target"], y.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, np.sum(np.mean((q - y) ** 2, -1)), rtol=1e-4)


def test_actor_and_targets_move_every_second_step(agent):
    batch = random_batch(4, B, OBS, ACT)
    step = jax.jit(td3.update)
    leaves = jax.tree_util.tree_leaves
    same = lambda x, y: all(np.array_equal(u, v) for u, v in zip(leaves(x), leaves(y)))  # noqa
    s = agent
    for t in range(1, 5):
        new, info = step(s, batch, jax.random.PRNGKey(t))
        moved = t % 2 == 0
        assert float(info["actor_updated"]) == float(moved)
        # Every step logs the actor loss at the parameters it started from (no zeros).
        want_loss = td3.actor_loss(s.actor.params, s, new.critic.params, random_batch(
            4, B, OBS, ACT))[0]
        np.testing.assert_allclose(float(info["actor_loss"]), float(want_loss), rtol=1e-5)
        assert float(info["bc_alpha"]) == pytest.approx(float(s.bc_alpha))
        assert same(new.actor.params, s.actor.params) != moved
        assert same(new.target_actor_params, s.target_actor_params) != moved
        assert same(new.target_critic_params, s.target_critic_params) != moved
        assert not same(new.critic.params, s.critic.params)
        if moved:
            np.testing.assert_allclose(
                leaves(new.target_actor_params)[0],
                0.995 * _np(leaves(s.target_actor_params)[0])
                + 0.005 * _np(leaves(new.actor.params)[0]), rtol=1e-5, atol=1e-7)
        s = new


def test_vmapped_seeds_and_members_match_their_sequential_updates(agent):
    """Seeds x members vmapped (the loops' shape): each member's state after 4 steps
    (two with the actor, two without) equals its own sequential updates, and the policy
    delay stays one branch (`stacking.lockstep`: a `cond` in the program, not a select
    that computes the actor step for every member on every step)."""
    S, N, steps = 2, 3, 4

    def varied(i):      # members differ in every float parameter, share their counters
        return jax.tree_util.tree_map(
            lambda x: x + 0.05 * i if jnp.issubdtype(x.dtype, jnp.floating) else x, agent)

    states = [[varied(i * N + j) for j in range(N)] for i in range(S)]
    batches = [[random_batch(10 + i * N + j, B, OBS, ACT) for j in range(N)] for i in range(S)]
    keys = jax.random.split(jax.random.PRNGKey(5), steps * S * N).reshape(steps, S, N, 2)
    stack = lambda rows: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *rows)  # noqa
    vm = jax.vmap(jax.vmap(td3.update))
    program = str(jax.make_jaxpr(vm)(stack([stack(r) for r in states]),
                                     stack([stack(r) for r in batches]), keys[0]))
    assert " cond[" in program
    run = jax.jit(vm)
    together = stack([stack(r) for r in states])
    for t in range(steps):
        together, info = run(together, stack([stack(r) for r in batches]), keys[t])
        assert np.all(np.asarray(info["actor_updated"]) == float((t + 1) % 2 == 0))
    one = jax.jit(td3.update)
    for i in range(S):
        for j in range(N):
            s = states[i][j]
            for t in range(steps):
                s, _ = one(s, batches[i][j], keys[t, i, j])
            for got, want in zip(jax.tree_util.tree_leaves(together),
                                 jax.tree_util.tree_leaves(s)):
                np.testing.assert_allclose(np.asarray(got)[i, j], want, rtol=2e-5, atol=1e-6)


def test_actor_loss_with_the_updated_critic_matches_numpy(agent):
    """The actor step sees the critic of the same step; TD3+BC: lambda = 2.5 / mean |Q1|
    at the policy's actions."""
    batch = random_batch(5, B, OBS, ACT)
    s = agent.replace(critic=agent.critic.replace(step=jnp.asarray(1, jnp.int32)))
    new, info = jax.jit(td3.update)(s, batch, jax.random.PRNGKey(6))
    assert float(info["actor_updated"]) == 1.0
    pi = np_mu(s, s.actor.params, batch["observations"])
    q1 = np_q(s, new.critic.params, batch["observations"], pi)[0]
    if s.objective == "td3_bc":
        lam = 2.5 / np.mean(np.abs(q1))
        want = -lam * q1.mean() + np.mean((pi - _np(batch["actions"])) ** 2)
        np.testing.assert_allclose(info["bc_lambda"], lam, rtol=1e-4)
        # Not at the data actions (the slides' form).
        q1_data = np_q(s, new.critic.params, batch["observations"], batch["actions"])[0]
        assert abs(2.5 / np.mean(np.abs(q1_data)) - lam) > 1e-3 * lam
    else:
        want = -q1.mean()
    np.testing.assert_allclose(info["actor_loss"], want, rtol=1e-4, atol=1e-6)
    old_q1 = np_q(s, s.critic.params, batch["observations"], pi)[0]
    assert abs(old_q1.mean() - q1.mean()) > 1e-4     # the test tells the critics apart


def test_state_normalizer_from_the_dataset():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(500, OBS)) * [1, 2, 0.001, 5] + [0, 3, 1, -2]
    mean, std = td3.state_normalizer(obs, 1e-3)
    np.testing.assert_allclose(mean, obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, obs.std(0) + 1e-3, rtol=1e-5)
    from configs import base
    cfg = base.get_config()
    cfg.td3.hidden_dims = (8,)
    members = jax.tree_util.tree_map(lambda x: x[None], td3.members_from_config(
        jax.random.PRNGKey(0), OBS, ACT, cfg, "td3_bc"))                # [S=1, N, ...]
    data = types.SimpleNamespace(arrays={"observations": obs.astype(np.float32)})
    got = td3.with_normalizer(members, data, cfg)
    assert got.obs_mean.shape == members.obs_mean.shape
    np.testing.assert_allclose(got.obs_std[0, 0], std, rtol=1e-6)


def test_td3_bc_run_resumes_from_its_checkpoint(minari_root, tmp_path, monkeypatch):
    def configure(c):
        algorithm.get("td3_bc").apply_preset(c)
        c.td3.hidden_dims = (8, 8)
        c.num_seeds = 2                      # the normaliser of each seed, vmapped

    rows = resumed_rows_match(tmp_path, monkeypatch, configure)
    assert {float(r["seed"]) for r in rows} == {0.0, 1.0}


# ---------------------------------------------------------------------------------------
# PR-FT: the refinement step and the alpha schedule
# ---------------------------------------------------------------------------------------

def test_refinement_moves_only_the_actor_with_the_normalised_loss(agent):
    from o2o_jax.agents import prft
    from configs import base
    cfg = base.get_config()
    s = prft._refine(agent, None, cfg)
    assert s.objective == "normalized_bc" and float(s.bc_alpha) == pytest.approx(0.08)
    batch = random_batch(7, B, OBS, ACT)
    new, info = jax.jit(td3.actor_only_update)(s, batch)
    leaves = jax.tree_util.tree_leaves
    for name in ("critic", "target_critic_params", "target_actor_params"):
        for x, y in zip(leaves(getattr(new, name)), leaves(getattr(s, name))):
            np.testing.assert_array_equal(x, y)
    pi = np_mu(s, s.actor.params, batch["observations"])
    q1 = np_q(s, s.critic.params, batch["observations"], pi)[0]
    want = -q1.mean() / np.mean(np.abs(q1)) + 0.08 * np.mean((pi - _np(batch["actions"])) ** 2)
    np.testing.assert_allclose(info["actor_loss"], want, rtol=1e-4, atol=1e-6)


def test_online_alpha_decays_exponentially_to_its_end_value(agent):
    from o2o_jax.agents import prft
    from configs import base
    cfg = base.get_config()
    cfg.online.update(epochs=3, first_epoch_multiplier=2, updates_per_epoch=5)
    n = prft.online_updates(cfg)
    assert n == (3 - 1 + 2) * 5
    refined = prft._refine(agent, None, cfg)
    refined = refined.replace(actor=refined.actor.replace(params=jax.tree_util.tree_map(
        lambda x: x + 1.0, refined.actor.params)))            # refinement moved the actor
    s = prft._to_online(refined, cfg)
    assert s.bc_alpha_decay == pytest.approx(0.5 ** (1 / n))
    assert _same_tree(s.target_actor_params, s.actor.params)   # the target follows it
    batch = random_batch(8, B, OBS, ACT)
    step = jax.jit(td3.update)
    alphas = []
    for t in range(n):
        s, info = step(s, batch, jax.random.PRNGKey(t))
        alphas.append(float(s.bc_alpha))
    # alpha_t = alpha_start (alpha_end / alpha_start)^(t / N): 0.08 -> 0.04 after N updates.
    np.testing.assert_allclose(alphas, 0.08 * 0.5 ** (np.arange(1, n + 1) / n), rtol=1e-5)
    assert prft.decay_factor(0.5, 0) == 1.0


def test_post_offline_methods_refuse_members_of_another_algo(minari_root, tmp_path):
    """PR-FT's refinement runs only after pretraining: TD3+BC members (same pytree) are
    refused with the fix named, not fine-tuned unrefined."""
    from o2o_jax import checkpoints, pipeline
    from tests.helpers import tiny_config
    c = tiny_config(tmp_path, "td3bc")
    algorithm.get("td3_bc").apply_preset(c)
    c.td3.hidden_dims = (8, 8)
    c.online.epochs = 0
    pipeline.run(c)
    c2 = tiny_config(tmp_path, "prft")
    algorithm.get("prft").apply_preset(c2)
    c2.td3.hidden_dims = (8, 8)
    c2.online.load_offline_from = str(tmp_path / "td3bc" / "offline_members")
    with pytest.raises(checkpoints.CheckpointError, match="offline.init_from"):
        pipeline.run(c2)


def test_refinement_runs_on_another_runs_td3_bc_members(minari_root, tmp_path):
    """offline.init_from with no steps: PR-FT's refinement runs on a TD3+BC run's members
    as they are (no second TD3+BC pretraining). The saved members keep that run's critics,
    targets and normaliser exactly (refinement moves the actor only), their actor moved,
    and the step-0 row scores the loaded members as the source's last evaluation did."""
    from o2o_jax import checkpoints, pipeline
    from tests.helpers import read_rows, tiny_config
    c = tiny_config(tmp_path, "td3bc")
    algorithm.get("td3_bc").apply_preset(c)
    c.td3.hidden_dims = (8, 8)
    c.online.epochs = 0
    pipeline.run(c)
    source = str(tmp_path / "td3bc" / "offline_members")
    c2 = tiny_config(tmp_path, "prft")
    algorithm.get("prft").apply_preset(c2)
    c2.td3.hidden_dims = (8, 8)
    c2.prft.pr_steps = 20
    c2.online.epochs = 0
    c2.offline.init_from, c2.offline.steps = source, 0
    pipeline.run(c2)
    template = jax.tree_util.tree_map(
        np.asarray, algorithm.get("td3_bc").create_members(jax.random.PRNGKey(0), 11, 3, c))
    template = jax.tree_util.tree_map(lambda x: x[None], template)   # [S = 1, N, ...]
    before = checkpoints.restore(source, template)
    after = checkpoints.restore(str(tmp_path / "prft" / "offline_members"), template)
    for name, get in [("critic", lambda m: m.critic.params),
                      ("target critic", lambda m: m.target_critic_params),
                      ("target actor", lambda m: m.target_actor_params),
                      ("normaliser", lambda m: (m.obs_mean, m.obs_std))]:
        assert _same_tree(get(before), get(after)), name
    assert not _same_tree(before.actor.params, after.actor.params)
    rows = read_rows(str(tmp_path / "prft"))
    src = [r for r in read_rows(str(tmp_path / "td3bc")) if r["eval_return"]]
    first = [r for r in rows if r["eval_return"]][0]
    assert (first["phase"], float(first["step"])) == ("offline", 0.0)
    assert float(first["eval_return"]) == float(src[-1]["eval_return"])
    assert [float(r["step"]) for r in rows if r["phase"] != "offline"][-1] == 20.0
    # The summary's offline score is the refined policy's (the members fine-tuning starts
    # from), evaluated at the end of the refinement: an episode rolled out here by hand
    # with the saved refined members, on the offline evaluation's seed, returns it.
    import json
    from o2o_jax import envs
    from o2o_jax.offline_loop import OFFLINE_EVAL_SEED
    summary = json.load(open(tmp_path / "prft" / "summary.json"))
    refined = jax.tree_util.tree_map(lambda x: x[0], after)          # seed 0's members
    env = envs.make_env(c2.env)
    obs, _ = env.reset(seed=OFFLINE_EVAL_SEED)
    total, done = 0.0, False
    while not done:
        act = algorithm.get("prft").members_act_eval(refined, np.asarray(obs, np.float32)[None])
        obs, r, term, trunc, _ = env.step(np.asarray(act)[0])
        total, done = total + float(r), term or trunc
    assert summary["offline"]["per_seed_return"][0] == pytest.approx(total, rel=1e-4)
    assert float(rows[-1]["eval_return"]) == pytest.approx(total, rel=1e-4)
    assert total != pytest.approx(float(src[-1]["eval_return"]), rel=1e-3)   # not TD3+BC's
    assert rows[-1]["phase"] != "offline"
    # With no refinement steps either, nothing would run: refused, naming both fields.
    from o2o_jax import config_checks
    c2.run_name, c2.prft.pr_steps = "prft0", 0
    with pytest.raises(config_checks.ConfigError, match="prft.pr_steps > 0"):
        pipeline.run(c2)
    # Fresh members with no pretraining are not saved as members of the method.
    c3 = tiny_config(tmp_path, "prft_fresh")
    algorithm.get("prft").apply_preset(c3)
    c3.td3.hidden_dims, c3.prft.pr_steps, c3.offline.steps, c3.online.epochs = (8, 8), 5, 0, 0
    pipeline.run(c3)
    assert not (tmp_path / "prft_fresh" / "offline_members").exists()
