"""BCQ losses and acting against a float64 NumPy re-implementation; vmapped members.

Random draws are regenerated with the key derivation documented in `bcq.py`; networks,
losses, the soft clipped double-Q target and the candidate selection are recomputed here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import offline
from o2o_jax.agents import bcq
from tests import numpy_ref as ref
from tests.helpers import random_batch

OBS, ACT, B, N_CAND = 4, 2, 6, 5
LATENT = 2 * ACT
N_MEMBERS = 3


PHI = 0.2   # larger than the default 0.05 so that perturbations are clearly visible


def make_cfg():
    c = bcq.default_config()
    c.vae_hidden_dims = (16, 16)
    c.actor_hidden_dims = (16, 16)
    c.critic_hidden_dims = (16, 16)
    c.n_candidates = N_CAND
    c.n_act_candidates = N_CAND
    c.phi = PHI
    return c


def make_batch(seed=0, b=B):
    return random_batch(seed, b, OBS, ACT, dones="alternate")


# --- NumPy networks ------------------------------------------------------------------

def _np(x):
    return np.asarray(x, np.float64)


def dense(p, x):
    return x @ _np(p["kernel"]) + _np(p["bias"])


def hidden(p, x):
    for i in range(len(p)):
        x = np.maximum(dense(p[f"Dense_{i}"], x), 0.0)
    return x


def np_encode(vp, s, a):
    h = hidden(vp["encoder"], np.concatenate([_np(s), _np(a)], -1))
    return dense(vp["latent_mean"], h), np.clip(dense(vp["latent_log_std"], h), -4, 15)


def np_decode(vp, s, z):
    return np.tanh(dense(vp["action_out"], hidden(vp["decoder"],
                                                  np.concatenate([_np(s), _np(z)], -1))))


def np_perturb(ap, s, a, phi):
    x = hidden(ap["MLP_0"], np.concatenate([_np(s), _np(a)], -1))
    return np.clip(_np(a) + phi * np.tanh(dense(ap["Dense_0"], x)), -1, 1)


def np_latent(key, shape):
    return np.clip(_np(jax.random.normal(key, shape + (LATENT,))), -0.5, 0.5)


def np_candidates(actor_p, vae_p, obs, key, n, phi):
    obs_n = np.broadcast_to(_np(obs)[:, None], (obs.shape[0], n, OBS))
    dec = np_decode(vae_p, obs_n, np_latent(key, (obs.shape[0], n)))
    return obs_n, dec, np_perturb(actor_p, obs_n, dec, phi)


def _member(tree, i):
    # NumPy slicing: eager jax indexing compiles a kernel per leaf shape (slow on CPU).
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def _noisy(tree, seed):
    # NumPy noise: eager jax.random per leaf shape compiles a kernel each (slow on CPU).
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.normal(size=x.shape), jnp.float32), tree)


# --- fixtures -----------------------------------------------------------------------

_create = jax.jit(lambda k: bcq.create(k, OBS, ACT, make_cfg()))   # one compile


@pytest.fixture(scope="module")
def state():
    """One member whose targets differ from the online nets, so every term is exercised."""
    s = _create(jax.random.PRNGKey(0))
    return s.replace(target_critic_params=_noisy(s.critic.params, 1),
                     target_actor_params=_noisy(s.actor.params, 2))


@pytest.fixture(scope="module")
def members():
    """3 members whose decoders are pushed towards +1 on action dim 0, so that the [-1, 1]
    clip is exercised."""
    ms = [_create(k) for k in jax.random.split(jax.random.PRNGKey(3), N_MEMBERS)]
    ms = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *ms)
    vae = ms.vae.params
    out = dict(vae["action_out"], bias=vae["action_out"]["bias"].at[:, 0].add(2.0))
    return ms.replace(vae=ms.vae.replace(params=dict(vae, action_out=out)))


# --- losses -------------------------------------------------------------------------

@pytest.mark.parametrize("kl_reduction", ["mean", "sum"])
def test_vae_elbo_matches_numpy(state, kl_reduction):
    vae = state.vae.params
    # Push one latent log-std below -4 so the clip matters.
    log_std = dict(vae["latent_log_std"], bias=vae["latent_log_std"]["bias"].at[0].add(-8.0))
    s = state.replace(kl_reduction=kl_reduction,
                      vae=state.vae.replace(params=dict(vae, latent_log_std=log_std)))
    batch, key = make_batch(1), jax.random.PRNGKey(4)
    loss, info = jax.jit(bcq.vae_loss)(s.vae.params, s, batch, key)

    mu, ls = np_encode(s.vae.params, batch["observations"], batch["actions"])
    assert np.all(ls[:, 0] == -4.0)
    z = mu + np.exp(ls) * _np(jax.random.normal(key, mu.shape))
    recon = np.mean((np_decode(s.vae.params, batch["observations"], z)
                     - _np(batch["actions"])) ** 2)
    kl = -0.5 * (1 + np.log(np.exp(ls) ** 2) - mu ** 2 - np.exp(ls) ** 2)
    kl = kl.mean() if kl_reduction == "mean" else kl.sum(-1).mean()
    np.testing.assert_allclose(info["recon_loss"], recon, rtol=1e-4)
    np.testing.assert_allclose(info["kl_loss"], kl, rtol=1e-4)
    np.testing.assert_allclose(loss, recon + 0.5 * kl, rtol=1e-4)


def test_soft_clipped_double_q_target_and_critic_loss_match_numpy(state):
    batch, key = make_batch(2), jax.random.PRNGKey(5)
    y, (loss, info) = jax.jit(lambda s, b, k: (bcq.td_targets(s, b, k),
                                               bcq.critic_loss(s.critic.params, s, b, k)))(
        state, batch, key)

    obs_n, _, a_next = np_candidates(state.target_actor_params, state.vae.params,
                                     batch["next_observations"], key, N_CAND, PHI)
    tq = ref.critic(state.target_critic_params, obs_n, a_next)           # [2, B, n]
    soft = 0.75 * tq.min(0) + 0.25 * tq.max(0)
    y_np = _np(batch["rewards"]) + 0.99 * (1 - _np(batch["dones"])) * soft.max(-1)
    np.testing.assert_allclose(y, y_np, rtol=1e-4, atol=1e-6)
    # The soft clip is neither the min nor the max of the twins here.
    assert np.all(np.abs(tq[0] - tq[1]) > 1e-4)
    q = ref.critic(state.critic.params, batch["observations"], batch["actions"])
    np.testing.assert_allclose(loss, np.sum(np.mean((q - y_np) ** 2, 1)), rtol=1e-4)


def test_actor_loss_matches_numpy(state):
    batch, key = make_batch(3), jax.random.PRNGKey(6)
    loss, _ = jax.jit(bcq.actor_loss)(state.actor.params, state, batch, key)
    obs = batch["observations"]
    a_vae = np_decode(state.vae.params, obs, np_latent(key, (B,)))
    q1 = ref.critic(state.critic.params, obs, np_perturb(state.actor.params, obs, a_vae, PHI))[0]
    np.testing.assert_allclose(loss, -np.mean(q1), rtol=1e-4, atol=1e-6)


# --- acting -------------------------------------------------------------------------

def test_act_picks_best_q1_candidate_within_phi_of_its_decoded_action(members):
    phi, obs, key = PHI, make_batch(4)["observations"], jax.random.PRNGKey(7)
    one = _member(members, 1)
    actions = np.asarray(jax.jit(bcq.act)(one, obs, key))

    obs_n, dec, cands = np_candidates(one.actor.params, one.vae.params, obs, key, N_CAND, phi)
    best = ref.critic(one.critic.params, obs_n, cands)[0].argmax(-1)
    chosen_dec = dec[np.arange(B), best]
    np.testing.assert_allclose(actions, cands[np.arange(B), best], atol=1e-5)
    assert np.all(np.abs(actions) <= 1.0)
    assert np.all(np.abs(actions - chosen_dec) <= phi + 1e-6)
    # The perturbation is non-trivial and the clip at +1 is active somewhere.
    assert np.max(np.abs(actions - chosen_dec)) > 0.05
    assert np.any(np.abs(cands - 1.0) < 1e-12)


def test_ensemble_act_scores_all_members_candidates_by_mean_q1_and_q_ens(members):
    phi, obs, key = PHI, make_batch(5)["observations"], jax.random.PRNGKey(8)
    actions = np.asarray(jax.jit(bcq.ensemble_act)(members, obs, key))

    keys = jax.random.split(key, N_MEMBERS)
    cands = np.concatenate([np_candidates(_member(members.actor.params, i),
                                          _member(members.vae.params, i), obs, keys[i],
                                          N_CAND, phi)[2] for i in range(N_MEMBERS)], 1)
    obs_m = np.broadcast_to(_np(obs)[:, None], cands.shape[:2] + (OBS,))
    q1 = np.mean([ref.critic(_member(members.critic.params, i), obs_m, cands)[0]
                  for i in range(N_MEMBERS)], 0)                          # [B, N n]
    np.testing.assert_allclose(actions, cands[np.arange(B), q1.argmax(-1)], atol=1e-5)

    q_ens = np.mean([ref.critic(_member(members.critic.params, i), obs, actions).min(0)
                     for i in range(N_MEMBERS)], 0)
    np.testing.assert_allclose(jax.jit(bcq.q_ens)(members, obs, jnp.asarray(actions)), q_ens,
                               rtol=1e-4, atol=1e-6)


# --- updates ------------------------------------------------------------------------

def test_vmapped_members_equal_separate_updates(members):
    """make_train_chunk over 3 stacked members == each member stepped alone, same keys;
    targets follow Polyak averaging of the updated nets."""
    steps, data = 2, make_batch(6, b=64)
    key = jax.random.PRNGKey(9)
    chunk = offline.make_train_chunk(steps, 8, bcq.update)
    vm, info = chunk(jax.tree_util.tree_map(jnp.copy, members), data, key)
    assert all(np.shape(v) == (N_MEMBERS,) and np.all(np.isfinite(v)) for v in info.values())

    step_fn = jax.jit(lambda s, k: offline.member_step(s, data, k, 8, bcq.update))
    step_keys = jax.random.split(key, steps)
    leaves = jax.tree_util.tree_leaves
    for i in range(N_MEMBERS):
        s = _member(members, i)
        for t in range(steps):
            prev = s
            s, _ = step_fn(s, jax.random.split(step_keys[t], N_MEMBERS)[i])
        for got, want in zip(leaves(_member(vm, i)), leaves(s)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
        for tgt, old, net in ((s.target_critic_params, prev.target_critic_params,
                               s.critic.params),
                              (s.target_actor_params, prev.target_actor_params,
                               s.actor.params)):
            for a, b, c in zip(leaves(tgt), leaves(old), leaves(net)):
                np.testing.assert_allclose(a, 0.995 * np.asarray(b) + 0.005 * np.asarray(c),
                                           rtol=1e-5, atol=1e-7)
