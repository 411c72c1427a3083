"""Importing rlkit (the Off2OnRL authors' PyTorch code) members: converted networks give the
torch modules' outputs, bad files are refused by name, and a converted checkpoint
fine-tunes through experiments.train. The torch modules are written here, with rlkit's
layer names and forward passes; the authors' own files are never used in tests."""
import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from o2o_jax import checkpoints, envs, rlkit_import  # noqa: E402
from o2o_jax.agents import actor_critic as ac  # noqa: E402
from o2o_jax.agents import ensemble  # noqa: E402
from tests.helpers import ROOT, tiny_config  # noqa: E402

OBS, ACT, H = 11, 3, (8, 8)     # hopper's dims (the smoke test runs in hopper)


class Policy(torch.nn.Module):
    """rlkit TanhGaussianPolicy's layers and forward (pre-tanh mean, clamped log-std)."""

    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        dims = [obs_dim] + list(hidden)
        for i in range(len(hidden)):
            setattr(self, f"fc{i}", torch.nn.Linear(dims[i], dims[i + 1]))
        self.n = len(hidden)
        self.last_fc = torch.nn.Linear(dims[-1], act_dim)
        self.last_fc_log_std = torch.nn.Linear(dims[-1], act_dim)

    def forward(self, obs):
        h = obs
        for i in range(self.n):
            h = torch.relu(getattr(self, f"fc{i}")(h))
        return self.last_fc(h), torch.clamp(self.last_fc_log_std(h), -20.0, 2.0)


class QF(torch.nn.Module):
    """rlkit ConcatMlp's layers and forward on concat(obs, act)."""

    def __init__(self, in_dim, hidden):
        super().__init__()
        dims = [in_dim] + list(hidden)
        for i in range(len(hidden)):
            setattr(self, f"fc{i}", torch.nn.Linear(dims[i], dims[i + 1]))
        self.n = len(hidden)
        self.last_fc = torch.nn.Linear(dims[-1], 1)

    def forward(self, obs, act):
        h = torch.cat([obs, act], dim=-1)
        for i in range(self.n):
            h = torch.relu(getattr(self, f"fc{i}")(h))
        return self.last_fc(h)[..., 0]


def write_members(folder, seeds=(0, 4), steps=(500, 1000), hidden=H):
    """rlkit-style member folders; returns {seed: (policy, qf1, qf2)} of the last step."""
    torch.manual_seed(0)
    modules = {}
    for seed in seeds:
        d = os.path.join(folder, f"hopper-random-v0_seed{seed}")
        os.makedirs(d)
        for step in steps:
            mods = (Policy(OBS, ACT, hidden), QF(OBS + ACT, hidden), QF(OBS + ACT, hidden))
            with torch.no_grad():   # larger weights than torch's init: a sharper test
                for m in mods:
                    for p in m.parameters():
                        p.mul_(3.0)
            for role, m in zip(rlkit_import.ROLES, mods):
                torch.save(m.state_dict(), os.path.join(d, f"{role}_{step}.pt"))
            modules[seed] = mods
    return modules


def fresh_members(n, hidden=H):
    cfg = tiny_config("/tmp", "unused")
    cfg.agent.hidden_dims = hidden
    return ensemble.create_members(jax.random.PRNGKey(3), OBS, ACT, cfg.agent, n)


def test_converted_networks_give_the_torch_outputs(tmp_path):
    mods = write_members(str(tmp_path))
    members, prov = rlkit_import.import_members(str(tmp_path), fresh_members(2), OBS, ACT, H)
    assert prov["member_seeds"] == [0, 4] and prov["steps"] == 1000
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(64, OBS)).astype(np.float32) * 2
    act = rng.uniform(-1, 1, size=(64, ACT)).astype(np.float32)
    for i, seed in enumerate((0, 4)):
        policy, qf1, qf2 = mods[seed]
        m = ensemble.member(members, i)
        mean, log_std = m.actor.apply_fn({"params": m.actor.params}, jnp.asarray(obs))
        with torch.no_grad():
            t_mean, t_log_std = policy(torch.from_numpy(obs))
            t_q = [q(torch.from_numpy(obs), torch.from_numpy(act)).numpy() for q in (qf1, qf2)]
        np.testing.assert_allclose(np.asarray(mean), t_mean.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(log_std), t_log_std.numpy(), rtol=1e-5,
                                   atol=1e-5)
        q = ac.q_values(m, m.critic.params, jnp.asarray(obs), jnp.asarray(act))
        np.testing.assert_allclose(np.asarray(q), np.stack(t_q), rtol=1e-5, atol=1e-4)
        tq = ac.q_values(m, m.target_critic_params, jnp.asarray(obs), jnp.asarray(act))
        np.testing.assert_array_equal(np.asarray(tq), np.asarray(q))   # targets = critics
    # A subset, and an explicit step.
    one, prov = rlkit_import.import_members(str(tmp_path), fresh_members(1), OBS, ACT, H,
                                            member_ids=[1], steps=500)
    assert prov["member_seeds"] == [4] and prov["files"][0]["actor"].endswith("actor_500.pt")


def test_mismatched_files_are_refused_by_name(tmp_path):
    write_members(str(tmp_path), hidden=(8, 6))
    with pytest.raises(rlkit_import.MemberFileError) as e:
        rlkit_import.import_members(str(tmp_path), fresh_members(2), OBS, ACT, H)
    msg = str(e.value)
    assert "actor_1000.pt" in msg and "fc1.weight" in msg and "(8, 8)" in msg
    with pytest.raises(rlkit_import.MemberFileError, match="num_members=3"):
        rlkit_import.import_members(str(tmp_path), fresh_members(3), OBS, ACT, (8, 6))
    with pytest.raises(rlkit_import.MemberFileError, match="steps every member has"):
        rlkit_import.import_members(str(tmp_path), fresh_members(2), OBS, ACT, (8, 6),
                                    steps=7)
    with pytest.raises(rlkit_import.MemberFileError, match="no <name>_seed<k>/"):
        rlkit_import.import_members(str(tmp_path / "hopper-random-v0_seed0"),
                                    fresh_members(2), OBS, ACT, (8, 6))


def test_imported_members_fine_tune_through_experiments_train(minari_root, tmp_path):
    """CLI import, then experiments.train from the checkpoint with 2 online seeds sharing
    the members; the epoch-0 evaluation is the torch ensemble's tanh(mean of means)."""
    mods = write_members(str(tmp_path / "src"))
    out = str(tmp_path / "members")
    env = {**os.environ, "MINARI_DATASETS_PATH": minari_root}
    cmd = [sys.executable, "-m", "experiments.import_members", f"--source={tmp_path / 'src'}",
           "--env=hopper", f"--out={out}", "--config=configs/hopper_medium.py:quick",
           "--config.agent.hidden_dims=(8, 8)", "--eval_episodes=1"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert checkpoints.read_meta(out)["imported"]["member_seeds"] == [0, 4]
    with open(os.path.join(out, "import_eval.json")) as f:
        evals = json.load(f)
    assert len(evals) == 2 and all(len(v) == 1 for v in evals.values())
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--force" in r.stderr      # no silent overwrite

    args = [f"--config.{k}={v}" for k, v in (
        ("dataset.kind", "random"), ("dataset.build_transitions", 1500),
        ("agent.hidden_dims", "(8, 8)"), ("agent.num_members", 2), ("num_seeds", 2),
        ("online.epochs", 2), ("online.env_steps_per_epoch", 40),
        ("online.updates_per_epoch", 10), ("online.first_epoch_multiplier", 2),
        ("online.eval_episodes", 2), ("online.batch_size", 32),
        ("online.dr_batch_size", 32), ("online.dr_hidden_dims", "(8, 8)"),
        ("online.load_offline_from", out), ("run_dir", str(tmp_path)), ("run_name", "ft"))]
    r = subprocess.run([sys.executable, "-m", "experiments.train",
                        "--config=configs/hopper_medium.py:quick"] + args, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "shared by all 2 seeds" in r.stdout
    with open(tmp_path / "ft" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["phase"] == "online"]
    assert not any(row["phase"] == "offline" for row in rows)
    assert len(rows) == 2 * 3     # epochs 0, 1 and the final evaluation, 2 seeds

    # Epoch 0, seed s: the torch members' deterministic ensemble action in the same envs.
    def torch_policy(o):
        with torch.no_grad():
            means = [mods[s][0](torch.from_numpy(np.asarray(o, np.float32)))[0]
                     for s in (0, 4)]
            return torch.tanh(torch.stack(means).mean(0)).numpy()

    from o2o_jax import online_loop
    for s in (0, 1):
        want = envs.evaluate(torch_policy, "hopper", 2,
                             seed=online_loop.ONLINE_EVAL_SEED + 1_000 * s).mean()
        got = [float(r["eval_return"]) for r in rows if float(r["epoch"]) == 0 and
               int(float(r["seed"])) == s]
        np.testing.assert_allclose(got, [want], rtol=1e-3)
    with open(tmp_path / "ft" / "summary.json") as f:
        assert json.load(f)["seeds"] == [0, 1]
