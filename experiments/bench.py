"""Speed benchmark: updates/s, compile time, and FLOP rate vs the measured matmul rate.

  python -m experiments.bench                     # all sections
  python -m experiments.bench --sections=agents   # one section

Each figure is the median over --reps timed calls of a compiled chunk of --steps updates
(lax.scan), after a warm-up call whose time is reported as compile time. Ratios printed
here are measured side by side in this one process.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import functools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from experiments import flops  # noqa: E402
from o2o_jax import offline  # noqa: E402
from o2o_jax.progress import format_seconds  # noqa: E402
from o2o_jax.agents import cql, ensemble, sac  # noqa: E402

# The authors' PyTorch code, full online steps/s (N = 5, batch 256, 2x256, both cores of a
# 2-core CPU): the brief's reference figure.
AUTHORS_STEPS_PER_S = 22.3

FLAGS = flags.DEFINE_list("sections", ["matmul", "agents", "methods", "branches", "online",
                                       "buffer", "seeds"],
                          "sections to run")
_REPS = flags.DEFINE_integer("reps", 5, "timed repetitions (median reported)")
_STEPS = flags.DEFINE_integer("steps", 100, "updates per compiled call")
_BATCH = flags.DEFINE_integer("batch", 256, "batch size")
_MEMBERS = flags.DEFINE_integer("members", 5, "ensemble size N")
_HIDDEN = flags.DEFINE_list("hidden", ["256", "256"], "hidden layer sizes")
_BUFFER_SIZE = flags.DEFINE_integer("buffer_size", 1_000_000, "prioritized buffer leaves")
OBS, ACT = 11, 3  # hopper


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        model = ""
        try:
            with open("/proc/cpuinfo") as f:
                model = next(l.split(":", 1)[1].strip() for l in f if "model name" in l)
        except (OSError, StopIteration):
            model = platform.processor()
        return f"cpu ({model}, {os.cpu_count()} cores visible)"
    return f"{d.platform} ({d.device_kind})"


def time_calls(fn, args_fn, reps):
    """(compile_s, [call_s...]); args_fn() gives fresh (donatable) arguments."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args_fn()))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(reps):
        args = args_fn()
        jax.block_until_ready(args)
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return compile_s, times


def matmul_rate(m, k, n, reps):
    """Dense f32 matmul FLOP/s of an [m,k]x[k,n] product (scan of 20 to amortise dispatch)."""
    assert k == n, "square right operand: each product feeds the next"
    a = jax.random.normal(jax.random.PRNGKey(0), (m, k))
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n)) / np.sqrt(k)

    @jax.jit
    def f(a, b):
        def body(x, _):
            return x @ b, None
        x, _ = jax.lax.scan(body, a, None, length=20)
        return x

    _, times = time_calls(f, lambda: (a, b), reps)
    return 20 * flops.matmul_flops(m, k, n) / statistics.median(times)


def fake_data(m=100_000):
    rng = np.random.default_rng(0)
    return {
        "observations": jnp.asarray(rng.normal(size=(m, OBS)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, size=(m, ACT)), jnp.float32),
        "rewards": jnp.asarray(rng.normal(size=m), jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(m, OBS)), jnp.float32),
        "dones": jnp.zeros(m, jnp.float32),
    }


def agent_cfg(hidden):
    c = base.get_agent_config()
    c.hidden_dims = tuple(hidden)
    return c


def bench_agents(hidden, batch, members, steps, reps, peak):
    data = fake_data()
    rows = []
    for name, n, update_fn, cql_actions in (
            ("SAC (1 agent)", 1, sac.update, 0),
            ("CQL (1 agent)", 1, cql.update, 30),
            (f"CQL ensemble (N={members})", members, cql.update, 30)):
        cfg = agent_cfg(hidden)
        if update_fn is sac.update:
            cfg.backup_entropy = True
            m0 = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg, n)
        else:
            m0 = cql.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg, n)
        chunk = offline.make_train_chunk(steps, batch, update_fn)
        copy = lambda: (jax.tree_util.tree_map(jnp.copy, m0), data, jax.random.PRNGKey(1))
        compile_s, times = time_calls(chunk, copy, reps)
        per_update = statistics.median(times) / steps
        f = flops.sac_update_flops(OBS, ACT, hidden, batch, cql_actions=cql_actions, members=n)
        rows.append((name, 1.0 / per_update, compile_s, f / per_update, f))
    print(f"\n## Agent updates (batch {batch}, hidden {hidden}, {steps} updates per call, "
          f"median of {reps})")
    print("| update | updates/s | compile s | GFLOP/update | GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|")
    for name, ups, comp, rate, f in rows:
        print(f"| {name} | {ups:.1f} | {comp:.1f} | {f / 1e9:.3f} | {rate / 1e9:.1f} | "
              f"{100 * rate / peak:.0f}% |")
    return rows


def xla_flops(fn, *args) -> float:
    """FLOPs of one call of `fn` by XLA's cost analysis of the compiled program (matmuls
    and elementwise work; on the SAC and CQL updates it is within 1.5% of the analytic
    matmul count of `experiments/flops.py`)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def method_setups(hidden):
    """[(algo, cfg, data, members, member)] for every registered method: its preset with
    one member and networks of `hidden` in every config section that has `hidden_dims` (a
    method with its own paper sizes, BCQ, keeps them); the fake dataset, with zero
    `mc_returns` for the methods that read them; its members [1, ...] and that member."""
    import copy
    from o2o_jax import algorithm
    data = fake_data()
    data["mc_returns"] = jnp.zeros_like(data["rewards"])
    base_cfg = base.get_config()
    for section in base_cfg.values():
        if hasattr(section, "keys") and "hidden_dims" in section:
            section.hidden_dims = tuple(hidden)
    out = []
    for algo in algorithm.all_algorithms():
        cfg = algo.apply_preset(copy.deepcopy(base_cfg))
        cfg.agent.num_members = 1
        method_data = data if algo.mc_returns else {k: v for k, v in data.items()
                                                    if k != "mc_returns"}
        m0 = algo.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg)
        out.append((algo, cfg, method_data, m0, jax.tree_util.tree_map(lambda x: x[0], m0)))
    return out


def branches(update_fn, *args) -> bool:
    """Whether one update's program has a `lax.cond` (traced, not compiled)."""
    return " cond[" in str(jax.make_jaxpr(update_fn)(*args))


def bench_methods(hidden, batch, steps, reps, peak):
    """Every registered method's offline update of one member: updates/s and % of the
    matmul rate. Each method with its preset; networks: `hidden` for every config section
    with `hidden_dims` (a method with its own paper sizes, BCQ, keeps them). A method
    whose one update call takes G minibatches (REDQ's UTD scan: its preset's batch is G x
    `batch`) counts G updates per call. FLOPs from XLA's cost analysis."""
    rows = []
    setups = method_setups(hidden)
    started = time.perf_counter()
    for i, (algo, cfg, method_data, m0, one) in enumerate(setups):
        per_call = max(1, cfg.online.batch_size // batch) if cfg.offline.steps == 0 else 1
        b = batch * per_call
        update_fn = algo.offline_update(cfg)
        one_update = (one, offline.sample_batch(method_data, jax.random.PRNGKey(2), b),
                      jax.random.PRNGKey(3))
        f = xla_flops(update_fn, *one_update)
        chunk = offline.make_train_chunk(steps, b, update_fn)
        copy_args = lambda: (jax.tree_util.tree_map(jnp.copy, m0), method_data,  # noqa: E731
                             jax.random.PRNGKey(1))
        compile_s, times = time_calls(chunk, copy_args, reps)
        per_update = statistics.median(times) / (steps * per_call)
        # XLA's cost analysis counts a scan's body once, not per iteration: a method
        # whose call scans G updates gets no FLOP figure.
        flop = None if per_call > 1 else f
        # XLA counts a `lax.cond` at its larger branch (TD3's policy delay: the actor step
        # on every update), so a method whose update branches has an upper bound.
        bound = branches(update_fn, *one_update)
        rows.append((algo.name, 1.0 / per_update, compile_s,
                     None if flop is None else flop / per_update, flop, bound))
        # The table prints at the end (minutes at full size): progress on stderr meanwhile.
        elapsed = time.perf_counter() - started
        print(f"[bench methods] {i + 1}/{len(setups)} {algo.name}: {1.0 / per_update:.1f} "
              f"updates/s (compile {compile_s:.1f} s); elapsed {format_seconds(elapsed)} ETA "
              f"{format_seconds(elapsed / (i + 1) * (len(setups) - i - 1))}",
              file=sys.stderr, flush=True)
    print(f"\n## Each method's offline update, one member (batch {batch}, hidden {hidden}, "
          f"{steps} calls per compiled chunk, median of {reps}; FLOPs by XLA's cost "
          "analysis; ≤: an update with a branch, counted at its larger one)")
    print("| algo | updates/s | compile s | GFLOP/update | GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|")
    for name, ups, comp, rate, f, bound in rows:
        le = "≤ " if bound else ""
        if f is None:
            print(f"| {name} | {ups:.1f} | {comp:.1f} | n/a (scanned updates) | n/a | n/a |")
            continue
        print(f"| {name} | {ups:.1f} | {comp:.1f} | {le}{f / 1e9:.3f} | {le}{rate / 1e9:.1f} | "
              f"{le}{100 * rate / peak:.0f}% |")
    return rows


def bench_branches(hidden, batch, steps, reps):
    """Each method whose offline update branches (a `lax.cond`, e.g. TD3's policy delay):
    its chunk as the loops run it (one member, vmapped), with the branch's predicate
    through `stacking.lockstep` (one branch taken) and with `lockstep` replaced by the
    identity (vmap turns the cond into a select of both branches), side by side."""
    from o2o_jax.agents import stacking
    real, rows = stacking.lockstep, []
    try:
        for algo, cfg, method_data, m0, one in method_setups(hidden):
            if cfg.offline.steps == 0:          # no offline update of its own
                continue
            if not branches(algo.offline_update(cfg), one, offline.sample_batch(
                    method_data, jax.random.PRNGKey(2), batch), jax.random.PRNGKey(3)):
                continue
            rates = {}
            for label, fn in (("select", lambda x: x), ("lockstep", real)):
                stacking.lockstep = fn        # read when the update is traced
                chunk = jax.jit(functools.partial(
                    offline.train_chunk, num_steps=steps, batch_size=batch,
                    update_fn=algo.offline_update(cfg)))
                copy_args = lambda: (jax.tree_util.tree_map(jnp.copy, m0),  # noqa: E731
                                     method_data, jax.random.PRNGKey(1))
                _, times = time_calls(chunk, copy_args, reps)
                rates[label] = steps / statistics.median(times)
            stacking.lockstep = real
            rows.append((algo.name, rates["select"], rates["lockstep"]))
            print(f"[bench branches] {algo.name} done", file=sys.stderr, flush=True)
    finally:
        stacking.lockstep = real
    print(f"\n## Branching updates under vmap: both branches vs one (batch {batch}, hidden "
          f"{hidden}, one member vmapped, {steps} updates per call, median of {reps})")
    print("| algo | updates/s, select (both branches) | updates/s, lockstep (one) | ratio |")
    print("|---|---|---|---|")
    for name, sel, one_branch in rows:
        print(f"| {name} | {sel:.1f} | {one_branch:.1f} | {one_branch / sel:.2f}x |")
    return rows


def bench_online(hidden, batch, members, steps, reps, peak, num_offline=1_000_000):
    """The full fused online step (balanced replay + DR net) beside the plain
    SAC-ensemble step (uniform replay, no DR net): the ratio is what balanced replay costs."""
    from ml_collections import ConfigDict
    from o2o_jax import online
    from o2o_jax.replay.modes import make_replay

    data = fake_data(num_offline)
    cfg = agent_cfg(hidden)
    m0 = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg, members)
    oc = ConfigDict(dict(reset_temperature=True, init_temperature=1.0, fresh_optimizers=True,
                         cql_weight=0.0, backup_entropy=True, epochs=250,
                         env_steps_per_epoch=1000, replay="balanced", init_online_fraction=0.5,
                         dr_hidden_dims=tuple(hidden), dr_lr=3e-4))
    new = {k: v[:50_000] for k, v in fake_data(50_000).items()}
    rows = []
    for name, mode in (("full online step (balanced replay + DR)", "balanced"),
                       ("plain SAC-ensemble step (uniform replay)", "uniform")):
        oc.replay = mode     # uniform replay: no sum tree, no DR net in the state
        s0 = online.init_state(m0, data, jax.random.PRNGKey(1), oc, OBS, ACT)
        s0 = s0.replace(replay=make_replay(mode).add(s0.replay, new))
        fn = online.make_train_epoch(steps, online.StepConfig(batch_size=batch,
                                                              dr_batch_size=batch, replay=mode))
        copy = lambda: (jax.tree_util.tree_map(jnp.copy, s0), data, jax.random.PRNGKey(2))
        compile_s, times = time_calls(fn, copy, reps)
        per = statistics.median(times) / steps
        f = flops.sac_update_flops(OBS, ACT, hidden, batch, members=members)
        if mode == "balanced":
            f += flops.dr_update_flops(OBS, ACT, hidden, batch)
        rows.append((name, 1.0 / per, compile_s, f, f / per))
    print(f"\n## Online step (N={members}, batch {batch}, hidden {hidden}, "
          f"{num_offline} offline + 50000 online transitions, {steps} steps per call, "
          f"median of {reps})")
    print("| step | steps/s | compile s | GFLOP/step | GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|")
    for name, ups, comp, f, rate in rows:
        print(f"| {name} | {ups:.1f} | {comp:.1f} | {f / 1e9:.3f} | {rate / 1e9:.1f} | "
              f"{100 * rate / peak:.0f}% |")
    print(f"balanced / plain time ratio: {rows[1][1] / rows[0][1]:.2f}")
    env_s = bench_interaction(s0.agent)
    full = 1.0 / (1.0 / rows[0][1] + env_s)
    print(f"env interaction (one stochastic ensemble-policy call + one hopper step): "
          f"{1e3 * env_s:.2f} ms per step")
    against = (f" = {full / AUTHORS_STEPS_PER_S:.2f}x the authors' PyTorch "
               f"{AUTHORS_STEPS_PER_S} steps/s (N=5, batch 256, 2x256, 2 CPU cores)"
               if paper_sizes(hidden, batch, members) else
               " (not the paper's sizes: no comparison with the authors' code)")
    print(f"**full online step** (env step + policy sample + fused gradient step): "
          f"{full:.1f} steps/s{against}")
    return rows, full


def bench_interaction(agent, steps: int = 1000) -> float:
    """Seconds per online env step as the pipeline collects: one jitted stochastic
    ensemble-policy call for the seed axis, then a MuJoCo hopper step (median of 3)."""
    from o2o_jax import algorithm, envs, seeds
    act = seeds.seeds_jit(algorithm.get("off2on").act)
    agent1 = seeds.stack([agent])
    env = envs.BatchedEnvs("hopper", 1, 0)
    keys = jax.random.split(jax.random.PRNGKey(3), steps)[None]
    act(agent1, jnp.asarray(env.obs[:, None]), keys[:, 0]).block_until_ready()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for t in range(steps):
            a = act(agent1, jnp.asarray(env.obs[:, None]), keys[:, t])
            env.step(np.asarray(a)[:, 0])
        times.append((time.perf_counter() - t0) / steps)
    env.close()
    return statistics.median(times)


def bench_seeds(hidden, batch, members, steps, reps, seed_counts=(1, 2, 4, 8)):
    """The full online step for S vmapped seeds in one program (offline data shared)."""
    from ml_collections import ConfigDict
    from o2o_jax import online, seeds
    from o2o_jax.replay.modes import make_replay

    data = fake_data(100_000)
    cfg = agent_cfg(hidden)
    oc = ConfigDict(dict(reset_temperature=True, init_temperature=1.0, fresh_optimizers=True,
                         cql_weight=0.0, backup_entropy=True, epochs=50,
                         env_steps_per_epoch=1000, replay="balanced", init_online_fraction=0.5,
                         dr_hidden_dims=tuple(hidden), dr_lr=3e-4))
    new = fake_data(20_000)
    step_cfg = online.StepConfig(batch_size=batch, dr_batch_size=batch)
    fn = online.make_train_epoch(steps, step_cfg, seed_axis=True)
    print(f"\n## Vmapped seeds: full online step (N={members}, batch {batch}, hidden {hidden}, "
          f"{steps} steps per call, median of {reps})")
    print("| seeds S | aggregate steps/s | per-seed steps/s | time vs S=1 | compile s |")
    print("|---|---|---|---|---|")
    base = None
    for num in seed_counts:
        states = []
        for s in range(num):
            m = ensemble.create_members(jax.random.PRNGKey(s), OBS, ACT, cfg, members)
            st = online.init_state(m, data, jax.random.PRNGKey(100 + s), oc, OBS, ACT)
            states.append(st.replace(replay=make_replay("balanced").add(st.replay, new)))
        s0 = seeds.stack(states)
        keys = jnp.stack([jax.random.PRNGKey(7 + s) for s in range(num)])
        copy = lambda: (jax.tree_util.tree_map(jnp.copy, s0), data, keys)
        compile_s, times = time_calls(fn, copy, reps)
        per_call = statistics.median(times)
        base = base or per_call
        print(f"| {num} | {num * steps / per_call:.1f} | {steps / per_call:.1f} | "
              f"{per_call / base:.2f}x | {compile_s:.1f} |")
    print(f"S={seed_counts[-1]} takes {per_call / base:.2f}x the time of S=1 (target on an "
          "H100/H200: at most 2x)")


def paper_sizes(hidden, batch, members) -> bool:
    """Whether a bench ran at the sizes the paper's figures refer to."""
    return list(hidden) == [256, 256] and batch == 256 and members == 5


def pipeline_estimate(ensemble_updates_per_s: float, online_steps_per_s: float,
                      offline_steps: int = 1_000_000, online_steps: int = 250_000) -> str:
    """The paper-scale pipeline's training time from the measured rates: the N members
    pretrain in one program (one ensemble update per step), then the full online steps."""
    off_s, on_s = offline_steps / ensemble_updates_per_s, online_steps / online_steps_per_s
    return (f"**paper-scale hopper-medium pipeline, estimated from the rates above**: "
            f"{offline_steps:,} CQL-ensemble updates at {ensemble_updates_per_s:.1f}/s = "
            f"{format_seconds(off_s)}, + {online_steps:,} full online steps at "
            f"{online_steps_per_s:.1f}/s = {format_seconds(on_s)}; total "
            f"{format_seconds(off_s + on_s)} (target on an H100/H200: at most 15 min; "
            "evaluations and dataset loading not included)")


def main(argv):
    del argv
    hidden = [int(h) for h in _HIDDEN.value]
    print(f"device: {device_name()}; jax {jax.__version__}")
    reps, steps, batch = _REPS.value, _STEPS.value, _BATCH.value
    peak = matmul_rate(batch * 8, hidden[0], hidden[0], reps)
    if "matmul" in FLAGS.value:
        big = matmul_rate(2048, 2048, 2048, reps)
        print("\n## Dense f32 matmul rate (this process)")
        print(f"| shape | GFLOP/s |\n|---|---|\n| [{batch * 8},{hidden[0]}]x[{hidden[0]},"
              f"{hidden[0]}] (reference for %) | {peak / 1e9:.1f} |\n| [2048,2048]x[2048,2048] "
              f"| {big / 1e9:.1f} |")
    agent_rows = online_full = None
    if "agents" in FLAGS.value:
        agent_rows = bench_agents(hidden, batch, _MEMBERS.value, steps, reps, peak)
    if "methods" in FLAGS.value:
        bench_methods(hidden, batch, steps, reps, peak)
    if "branches" in FLAGS.value:
        bench_branches(hidden, batch, steps, reps)
    if "online" in FLAGS.value:
        _, online_full = bench_online(hidden, batch, _MEMBERS.value, steps, reps, peak)
    if agent_rows and online_full and paper_sizes(hidden, batch, _MEMBERS.value):
        print("\n" + pipeline_estimate(agent_rows[-1][1], online_full))
    if "seeds" in FLAGS.value:
        bench_seeds(hidden, batch, _MEMBERS.value, steps, reps)
    if "buffer" in FLAGS.value:
        from experiments import bench_buffer as replay_bench
        r = replay_bench.time_buffer_ops(capacity=_BUFFER_SIZE.value, batch_size=batch)
        print(f"\n## Prioritized buffer ({_BUFFER_SIZE.value} leaves, batch {batch})")
        for k, v in r.items():
            print(f"| {k} | {v} |")


if __name__ == "__main__":
    from experiments import cli
    cli.run(main, "bench")
