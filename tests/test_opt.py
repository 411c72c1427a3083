"""OPT (our reading): the phase switch (Q^on meta-pre-trained with pi and Q^off frozen,
then fine-tuning), the second-order meta gradient against finite differences, and the
kappa schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import opt
from tests.helpers import random_batch

OBS, ACT, B = 4, 2, 16


@pytest.fixture(scope="module")
def member():
    from configs import base
    from o2o_jax import algorithm
    cfg = algorithm.get("opt").apply_preset(base.get_config())
    cfg.td3.hidden_dims = (16, 16)
    cfg.opt.update(pretrain_updates=2, kappa_fraction=0.5, meta_lr=0.05)
    cfg.online.update(epochs=2, updates_per_epoch=6, first_epoch_multiplier=1)
    members = opt.to_online(opt.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg), cfg)
    return jax.tree_util.tree_map(lambda x: x[0], members)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                     jax.tree_util.tree_leaves(b)))


def test_phase_switch(member):
    assert member.kappa_updates == pytest.approx(0.5 * (12 - 2))
    step = jax.jit(opt.online_update)
    s = member
    for t in range(5):
        new, info = step(s, random_batch(t, B, OBS, ACT), jax.random.PRNGKey(t))
        pre = t < 2
        assert float(info["opt_pretraining"]) == float(pre)
        assert not _same(new.q_on.params, s.q_on.params)
        assert _same(new.td3.critic.params, s.td3.critic.params) == pre
        if pre:
            assert _same(new.td3.actor.params, s.td3.actor.params)
            assert float(info["meta_loss"]) > 0
        np.testing.assert_allclose(float(info["opt_kappa"]),
                                   np.clip((t - 2) / 5.0, 0, 1), atol=1e-7)
        s = new
    assert not _same(s.td3.actor.params, member.td3.actor.params)   # fine-tuning moved it


def test_members_update_matches_each_member_alone(member):
    """members_update (vmap over members on a shared batch) across the phase switch: each
    member's state equals its own sequential `online_update`s with its key, and the phase
    and the policy delay stay branches (`stacking.lockstep`: `cond`s in the program, not
    selects computing both phases for every member)."""
    n = 3
    members = jax.tree_util.tree_map(
        lambda x: jnp.stack([x + 0.05 * i if jnp.issubdtype(x.dtype, jnp.floating) else x
                             for i in range(n)]), member)
    batch = random_batch(7, B, OBS, ACT)
    assert str(jax.make_jaxpr(opt.members_update)(
        members, batch, jax.random.PRNGKey(0))).count(" cond[") >= 2
    run, one = jax.jit(opt.members_update), jax.jit(opt.online_update)
    alone = [jax.tree_util.tree_map(lambda x: x[i], members) for i in range(n)]
    for t in range(4):                    # 2 pre-training steps, then 2 of fine-tuning
        b, key = random_batch(20 + t, B, OBS, ACT), jax.random.PRNGKey(30 + t)
        members, info = run(members, b, key)
        np.testing.assert_array_equal(info["opt_pretraining"], float(t < 2))
        alone = [one(s, b, k)[0] for s, k in zip(alone, jax.random.split(key, n))]
    for i, s in enumerate(alone):
        for got, want in zip(jax.tree_util.tree_leaves(members), jax.tree_util.tree_leaves(s)):
            np.testing.assert_allclose(np.asarray(got)[i], want, rtol=2e-5, atol=1e-6)


def test_meta_gradient_is_second_order(member):
    batch, key = random_batch(9, B, OBS, ACT), jax.random.PRNGKey(3)
    params = member.q_on.params
    loss = lambda p: opt.meta_loss(p, member, batch, key)[0]   # noqa: E731
    grad = jax.grad(loss)(params)
    direction = jax.tree_util.tree_map(
        lambda x: jax.random.normal(jax.random.PRNGKey(4), x.shape), params)
    eps = 1e-3
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction)  # noqa
    fd = (float(loss(shift(eps))) - float(loss(shift(-eps)))) / (2 * eps)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(
        jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=2e-2)
    # First order (the inner gradient held fixed) gives another value: the test can tell.
    off, on = opt.halves(batch)
    k_off, k_on = jax.random.split(key)
    g_in = jax.grad(opt.td_loss_on)(params, member, off, k_off)
    first = jax.grad(lambda p: opt.td_loss_on(p, member, off, k_off) + opt.td_loss_on(
        jax.tree_util.tree_map(lambda q, d: q - 0.05 * jax.lax.stop_gradient(d), p, g_in),
        member, on, k_on))(params)
    first_dir = sum(float(jnp.sum(g * d)) for g, d in zip(
        jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(direction)))
    assert abs(first_dir - analytic) > 1e-3 * abs(analytic)
