"""The recipe at a tiny size: every kind builds, loads with the right shapes and metadata;
medium-expert holds both parts; a missing dataset with no network gets built by `ensure`."""
import json

import numpy as np
import pytest

from o2o_jax import envs
from o2o_jax.data import behavior, loader, recipes, store

TINY = dict(transitions=240, train_steps=300, start_steps=100, chunk=100, eval_every=100,
            eval_episodes=2, hidden_dims=(32, 32), batch_size=32, num_envs=4,
            target_return=-1e9)   # reached at the first evaluation (100 env steps)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """All five hopper kinds built once into a fresh Minari root."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        logs = []
        b = recipes.make_budget(**TINY)
        ids = {k: recipes.build("hopper", k, b, log=logs.append)
               for k in ("random", "medium", "medium-replay", "expert", "medium-expert")}
        loaded = {k: loader.load(ds, env_name="hopper") for k, ds in ids.items()}
        yield {"root": root, "ids": ids, "data": loaded, "logs": logs}


def complete_episode_returns(ds):
    """Mean return of episodes that ended by termination or the env's 1000-step limit."""
    starts, ends = ds.episode_bounds()
    out = []
    for s, e in zip(starts, ends):
        if ds.arrays["dones"][e - 1] > 0 or e - s == 1000:
            out.append(ds.arrays["rewards"][s:e].astype(np.float64).sum())
    return np.asarray(out)


@pytest.mark.parametrize("kind", recipes.KINDS)
def test_each_kind_builds_and_loads(built, kind):
    ds = built["data"][kind]
    assert ds.dataset_id == f"o2o/hopper/{kind}-v0"
    n = {"medium-replay": 100, "medium-expert": 480}.get(kind, 240)
    assert ds.num_transitions == n
    for k, shape in {"observations": (n, 11), "actions": (n, 3), "rewards": (n,),
                     "next_observations": (n, 11), "dones": (n,), "truncations": (n,),
                     "episode_starts": (n,), "episode_ends": (n,)}.items():
        assert ds.arrays[k].shape == shape and ds.arrays[k].dtype == np.float32, k
    # Transitions chain inside an episode: next_obs[t] == obs[t + 1] unless t ends it.
    inner = ds.arrays["episode_ends"][:-1] == 0
    np.testing.assert_array_equal(ds.arrays["next_observations"][:-1][inner],
                                  ds.arrays["observations"][1:][inner])
    # Every episode ends with exactly one of termination / truncation.
    ends = ds.arrays["episode_ends"] > 0
    assert np.all(ds.arrays["dones"][~ends] == 0) and np.all(ds.arrays["truncations"][~ends] == 0)
    assert np.all((ds.arrays["dones"][ends] + ds.arrays["truncations"][ends]) == 1)
    assert np.all(np.abs(ds.arrays["actions"]) <= 1.0)
    m = ds.metadata
    assert m["o2o_env"] == "hopper" and m["o2o_kind"] == kind
    assert m["o2o_recipe"] == recipes.RECIPES[kind]
    assert (m["ref_min_score"], m["ref_max_score"]) == (-20.272305, 3234.3)
    assert m["o2o_reference"]["random"] == -20.272305 and m["o2o_reference"]["expert"] == 3234.3
    assert m["o2o_num_transitions"] == m["total_steps"] == n
    assert json.loads(m["env_spec"])["id"] == "Hopper-v5"
    assert m["o2o_build"]["budget"]["transitions"] == 240 and m["o2o_build_seconds"] >= 0
    # Behaviour return recomputed independently from the arrays.
    rets = complete_episode_returns(ds)
    if len(rets):
        assert m["o2o_behavior_return"] == pytest.approx(rets.mean(), rel=1e-5)
        assert m["o2o_behavior_normalized_score"] == pytest.approx(
            100 * (rets.mean() + 20.272305) / (3234.3 + 20.272305), rel=1e-5)


def test_policies_saved_and_reloadable(built):
    pdir = built["root"] / "o2o" / "hopper" / "policies" / "sac-seed0"
    for role, steps in (("medium", 100), ("expert", 300)):
        agent, info = behavior.load_policy(pdir / role)
        assert info["env_steps"] == steps and info["role"] == role
        assert info["agent_config"]["hidden_dims"] == [32, 32]
        assert info["agent_config"]["cql_weight"] == 0.0
        obs = np.zeros((2, 11), np.float32)
        act = np.asarray(behavior.policy_fn(agent, 0, deterministic=True)(obs))
        assert act.shape == (2, 3) and np.all(np.abs(act) <= 1)
    # The datasets name the policy that generated them.
    for kind in ("medium", "medium-replay", "expert"):
        pol = built["data"][kind].metadata["o2o_policy"]
        assert pol["file"] == f"o2o/hopper/policies/sac-seed0/" \
                              f"{'expert' if kind == 'expert' else 'medium'}.msgpack"
    # The expert continued the medium run instead of starting over.
    assert any("continuing the run from its medium point" in line for line in built["logs"])


def test_medium_replay_is_the_sac_replay_up_to_the_medium_point(built):
    ds = built["data"]["medium-replay"]
    # SAC's first 100 steps are its uniform warm-up from env.reset(seed=0).
    env = envs.make_env("hopper")
    obs0, _ = env.reset(seed=0)
    env.close()
    np.testing.assert_allclose(ds.arrays["observations"][0], obs0, rtol=1e-6)
    assert ds.arrays["episode_ends"][-1] == 1   # the running episode is cut and truncated
    assert ds.metadata["o2o_policy"]["env_steps"] == 100


def test_medium_expert_contains_both_parts(built):
    me, med, exp = (built["data"][k] for k in ("medium-expert", "medium", "expert"))
    for k in me.arrays:
        np.testing.assert_array_equal(me.arrays[k],
                                      np.concatenate([med.arrays[k], exp.arrays[k]]), err_msg=k)
    assert me.metadata["combined_datasets"] == ["o2o/hopper/medium-v0", "o2o/hopper/expert-v0"]
    assert me.num_episodes == med.num_episodes + exp.num_episodes


def test_build_keeps_existing_dataset(built, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(built["root"]))
    logs = []
    recipes.build("hopper", "random", recipes.make_budget(**TINY), log=logs.append)
    assert "exists; keeping it" in logs[0]


def test_missing_dataset_no_network_builds_then_loads(tmp_path, monkeypatch):
    """A config naming Minari's official id, nothing local, a dead network: `ensure` gives
    up on the download after its timeout, builds our recipe's dataset and loads it."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(loader, "DOWNLOAD_CODE", "import time; time.sleep(60)")  # a hang
    logs = []
    ds = loader.ensure("hopper", "random", "mujoco/hopper/random-v0", build_transitions=150,
                       download_timeout_s=1.0, log=logs.append)
    text = "\n".join(logs)
    assert "could not download mujoco/hopper/random-v0: no answer within 1 s" in text
    assert "Building dataset o2o/hopper/random-v0: 150 transitions" in text
    assert "Expected time" in text
    assert ds.dataset_id == "o2o/hopper/random-v0" and ds.num_transitions == 150
    assert not store.exists_locally("mujoco/hopper/random-v0")
    # Second call: found locally, nothing rebuilt.
    logs.clear()
    again = loader.ensure("hopper", "random", "mujoco/hopper/random-v0", download_timeout_s=1.0,
                          log=logs.append)
    np.testing.assert_array_equal(again.arrays["observations"], ds.arrays["observations"])
    assert not any("Building" in line for line in logs)


def test_ensure_builds_medium_with_sac(tmp_path, monkeypatch):
    """The README path: `ensure('hopper', 'medium')` on an empty root trains, rolls out,
    caches, and loads; our own ids never try a download."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))

    def no_download(*a, **k):
        raise AssertionError("our ids must not be downloaded")

    monkeypatch.setattr(loader, "try_download", no_download)
    tiny = {k: v for k, v in TINY.items() if k != "transitions"}
    ds = loader.ensure("hopper", "medium", build_transitions=120, log=lambda s: None, **tiny)
    assert ds.num_transitions == 120 and ds.metadata["o2o_kind"] == "medium"
    assert store.exists_locally("o2o/hopper/medium-replay-v0")   # side product of the run


def test_announced_time_of_a_medium_build(tmp_path, monkeypatch):
    """The announcement gives the typical time to the medium point our own seed-0 build
    took (hopper: 200k env steps at ~95 SAC steps/s, then a 1M rollout), with the cap as
    the upper bound; with other settings it says the stop is not known in advance."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from o2o_jax.progress import format_seconds
    b = recipes.make_budget()
    # With the package's shipped hopper medium policy: a rollout only, timed as one.
    shipped = recipes.describe("hopper", "medium", b)
    assert "transitions of the shipped medium policy" in shipped, shipped
    assert (f"Expected time: ~{format_seconds(1_000_000 / 5_800.0)} (no training; rough, "
            "from a 2-core CPU at ~5,800 rollout steps/s)") in shipped, shipped
    monkeypatch.setattr(recipes, "SHIPPED_DIR", tmp_path / "none_shipped")
    text = recipes.describe("hopper", "medium", b)
    typical = 200_000 / 95.0 + 1_000_000 / 5_800.0
    upper = 1_000_000 / 95.0 + 1_000_000 / 5_800.0
    assert (f"Expected time: ~{format_seconds(typical)} (our seed-0 build of this recipe "
            f"reached the medium point at 200,000 env steps; up to ~{format_seconds(upper)}"
            in text), text
    other = recipes.describe("hopper", "medium", recipes.make_budget(seed=3))
    assert f"up to ~{format_seconds(upper)} (SAC stops at the medium point, which is not known" in other


def test_announced_time_counts_from_where_the_sac_run_starts(tmp_path, monkeypatch):
    """An expert build that resumes an interrupted run, or continues the saved run from
    its medium point, announces the SAC time of the steps left, not of the whole budget
    (a resumed walker2d build at 550k of 1M once announced ~2h58m and took 37m)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(recipes, "SHIPPED_DIR", tmp_path / "none_shipped")
    from o2o_jax.progress import format_seconds
    b = recipes.make_budget()
    rollout = 1_000_000 / 5_800.0
    fresh = recipes.describe("walker2d", "expert", b)
    assert f"up to ~{format_seconds(1_000_000 / 95.0 + rollout)} " in fresh, fresh
    assert "SAC from" not in fresh
    pdir = recipes.policy_dir("walker2d", b.seed)
    pdir.mkdir(parents=True)
    # The saved run's medium point (policy, agent and its replay set): continued from it.
    (pdir / "medium.json").write_text(json.dumps({"env_steps": 280_000}))
    (pdir / "medium_agent.msgpack").write_bytes(b"")
    replay_id = recipes.default_id("walker2d", "medium-replay")
    monkeypatch.setattr(recipes.store, "exists_locally", lambda ds: ds == replay_id)
    text = recipes.describe("walker2d", "expert", b)
    assert "(SAC from 280,000 env steps: continuing from its medium point)" in text, text
    assert f"up to ~{format_seconds(720_000 / 95.0 + rollout)} " in text, text
    # An interrupted run's checkpoint of the same settings wins over the medium point.
    cfg = behavior.sac_config(b.hidden_dims)
    record = {"env_steps": 550_000, "medium_reached": True,
              **recipes._progress_key(cfg, b, b.target("walker2d"))}
    (pdir / "in_progress.json").write_text(json.dumps(record))
    text = recipes.describe("walker2d", "expert", b)
    assert "(SAC from 550,000 env steps: resuming its checkpoint)" in text, text
    assert f"up to ~{format_seconds(450_000 / 95.0 + rollout)} " in text, text
    # No SAC steps left (the checkpoint at or past --train_steps is not resumed; the
    # medium point at 280k is continued from, with nothing to train): said so.
    few = recipes.make_budget(train_steps=280_000)
    assert "no SAC steps left" in recipes.describe("walker2d", "expert", few)
    # A medium build resuming a checkpoint before the medium point: the typical time is
    # the rest of the way to our run's medium point (280k), the bound the rest of the cap.
    (pdir / "medium.json").unlink()
    pre = {**record, "env_steps": 100_000, "medium_reached": False}
    (pdir / "in_progress.json").write_text(json.dumps(pre))
    text = recipes.describe("walker2d", "medium", b)
    assert "(SAC from 100,000 env steps: resuming its checkpoint)" in text, text
    assert (f"Expected time: ~{format_seconds(180_000 / 95.0 + rollout)} " in text
            and f"up to ~{format_seconds(900_000 / 95.0 + rollout)} " in text), text
    # Resumed past our run's medium point (300k > 280k): no typical time, the bound only.
    (pdir / "in_progress.json").write_text(json.dumps({**pre, "env_steps": 300_000}))
    text = recipes.describe("walker2d", "medium", b)
    assert f"up to ~{format_seconds(700_000 / 95.0 + rollout)} (SAC stops" in text, text
    # An unreadable record is not resumed, and no announcement fails on it.
    (pdir / "in_progress.json").write_text("")
    assert "SAC from" not in recipes.describe("walker2d", "medium", b)
    assert "uniformly random" in recipes.describe("walker2d", "random", b)
    (pdir / "medium.json").write_text(json.dumps({"env_steps": 280_000}))
    (pdir / "in_progress.json").write_text(json.dumps(record))
    # A medium build does not continue a run past the medium point: the whole budget.
    medium = recipes.describe("walker2d", "medium-replay", b)
    assert "SAC from" not in medium, medium
    # Of other settings (another target): not resumed, so not counted either.
    (pdir / "in_progress.json").write_text(json.dumps({**record, "target_return": 1.0}))
    assert "resuming its checkpoint" not in recipes.describe("walker2d", "expert", b)


def test_episodes_file_round_trip(tmp_path):
    """save_episodes / load_episodes keep every array and the `cut` flag exactly."""
    rng = np.random.default_rng(0)
    eps = []
    for t, cut in ((3, False), (1, False), (5, True)):
        ep = {"observations": rng.normal(size=(t + 1, 4)), "actions": rng.normal(size=(t, 2)
                                                                                ).astype(np.float32),
              "rewards": rng.normal(size=t), "terminations": np.arange(t) == t - 1,
              "truncations": np.zeros(t, bool)}
        if cut:
            ep["cut"] = True
        eps.append(ep)
    behavior.save_episodes(tmp_path / "e.npz", eps)
    back = behavior.load_episodes(tmp_path / "e.npz")
    assert len(back) == 3
    for a, b in zip(eps, back):
        assert set(a) == set(b)
        for k in behavior.EPISODE_KEYS + ("observations",):
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype


def test_interrupted_sac_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """An expert build (SAC to 600 env steps, checkpoints every 200) killed after its
    checkpoint at 400 resumes there: the next build trains the remaining 200 steps only,
    from the checkpoint's agent and replay (which begins with the medium-replay data,
    collected up to the medium point at 100), and removes the checkpoint when done."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    b = recipes.make_budget(**{**TINY, "train_steps": 600, "checkpoint_every": 200})
    real_save = recipes._save_progress_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(pdir, agent, step, *args):
        real_save(pdir, agent, step, *args)
        if step == 400:
            raise Killed
    monkeypatch.setattr(recipes, "_save_progress_checkpoint", save_then_die)
    with pytest.raises(Killed):
        recipes.build("hopper", "expert", b, log=lambda s: None)
    pdir = recipes.policy_dir("hopper", 0)
    record = json.loads((pdir / "in_progress.json").read_text())
    assert record["env_steps"] == 400 and record["medium_reached"]
    assert not (pdir / "expert.json").exists()
    saved = behavior.load_episodes(pdir / "in_progress_episodes.npz")
    assert sum(len(e["rewards"]) for e in saved) == 400
    # The replay's first 100 transitions are the medium-replay set's, in order.
    replay = loader.load("o2o/hopper/medium-replay-v0", "hopper").transitions()
    assert len(replay["rewards"]) == 100
    first = behavior.episodes_to_transitions(saved)
    for k in ("observations", "actions", "rewards", "dones"):
        np.testing.assert_allclose(first[k][:100], replay[k], rtol=1e-6)

    monkeypatch.setattr(recipes, "_save_progress_checkpoint", real_save)
    calls, logs = [], []
    real_train = behavior.train_sac

    def spy(*args, **kwargs):
        agent, step, episodes = kwargs["resume"]
        calls.append((step, len(episodes), kwargs["resume_medium_reached"]))
        run = real_train(*args, **kwargs)
        calls.append(run.final.env_steps)
        return run
    monkeypatch.setattr(behavior, "train_sac", spy)
    recipes.build("hopper", "expert", b, log=logs.append)
    assert calls == [(400, len(saved), True), 600]
    assert any("resuming the interrupted run from its checkpoint at 400" in s for s in logs)
    assert json.loads((pdir / "expert.json").read_text())["env_steps"] == 600
    assert not any(pdir.glob("in_progress*"))


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    b = recipes.make_budget(**{**TINY, "train_steps": 400, "checkpoint_every": 200})
    pdir = recipes.policy_dir("hopper", 0)
    cfg = behavior.sac_config(b.hidden_dims)
    agent = recipes.ac.create(recipes.jax.random.PRNGKey(0), 11, 3, cfg)
    recipes._save_progress_checkpoint(pdir, agent, 200, False, [], cfg,
                                      recipes.make_budget(**{**TINY, "batch_size": 64}),
                                      b.target("hopper"))
    logs = []
    assert recipes._progress_checkpoint("hopper", cfg, b, b.target("hopper"), True,
                                        logs.append) is None
    assert "batch_size differ" in logs[-1]
    # The same settings: resumed.
    recipes._save_progress_checkpoint(pdir, agent, 200, False, [], cfg, b, b.target("hopper"))
    got = recipes._progress_checkpoint("hopper", cfg, b, b.target("hopper"), True, logs.append)
    assert got is not None and got[1] == 200 and got[2] is False
    # A medium build does not continue a run past its medium point.
    recipes._save_progress_checkpoint(pdir, agent, 200, True, [], cfg, b, b.target("hopper"))
    assert recipes._progress_checkpoint("hopper", cfg, b, b.target("hopper"), False,
                                        logs.append) is None


def test_resumed_run_that_never_reaches_the_target_still_gives_a_medium_policy(
        tmp_path, monkeypatch):
    """A medium build whose target is never reached uses the final policy (and the whole
    run as medium-replay): also when it was interrupted and resumed before any medium point.
    Checkpoints fall on the first chunk boundary at or after each multiple of
    checkpoint_every (150 with chunks of 100: 200, 300, 500 in a 600-step run)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    b = recipes.make_budget(**{**TINY, "train_steps": 600, "checkpoint_every": 150,
                               "target_return": 1e9})
    real_save = recipes._save_progress_checkpoint
    steps = []

    class Killed(Exception):
        pass

    def save_then_maybe_die(pdir, agent, step, *args):
        real_save(pdir, agent, step, *args)
        steps.append(step)
        if step == 300:
            raise Killed
    monkeypatch.setattr(recipes, "_save_progress_checkpoint", save_then_maybe_die)
    with pytest.raises(Killed):
        recipes.build("hopper", "medium", b, log=lambda s: None)
    assert steps == [200, 300]
    pdir = recipes.policy_dir("hopper", 0)
    assert not json.loads((pdir / "in_progress.json").read_text())["medium_reached"]
    logs = []
    recipes.build("hopper", "medium", b, log=logs.append)
    assert steps == [200, 300, 500]
    info = json.loads((pdir / "medium.json").read_text())
    assert info["env_steps"] == 600 and not info["target_reached"]
    replay = loader.load("o2o/hopper/medium-replay-v0", "hopper")
    assert replay.num_transitions == 600          # the whole run, both sessions
    assert any("resuming the interrupted run from its checkpoint at 300" in s for s in logs)
