"""Build our D4RL-style datasets as Minari datasets (`o2o/<env>/<kind>-v0`).

    python -m experiments.make_dataset --env=hopper --kind=medium
    python -m experiments.make_dataset --env=hopper --kind=all --transitions=100000 \
        --train_steps=300000                 # a smaller set, all five kinds
    python -m experiments.make_dataset --table   # markdown table of the local datasets

Kinds: random, medium, medium-replay, expert, medium-expert (see o2o_jax/data/recipes.py).
Datasets go to Minari's local root ($MINARI_DATASETS_PATH, else ~/.minari/datasets);
behaviour policies to <root>/o2o/<env>/policies/sac-seed<seed>/ and are reused by later
builds (delete that folder to retrain). Where the package ships the behaviour policy
(o2o_jax/data/policies/, `python -m experiments.ship_policy`) and the budget is the one it
came from, medium and expert are rolled out from it without training; --retrain trains
SAC anyway. Progress lines with elapsed time and ETA go to stderr.
"""
import time

from absl import app, flags

from o2o_jax import envs
from o2o_jax.data import loader, recipes, store
from o2o_jax.progress import format_seconds

_ENV = flags.DEFINE_enum("env", "hopper", sorted(envs.ENVS), "Environment.")
_KIND = flags.DEFINE_enum("kind", "medium", list(recipes.KINDS) + ["all"],
                          "Dataset kind; 'all' builds the five in dependency order.")
_TRANSITIONS = flags.DEFINE_integer("transitions", 1_000_000,
                                    "Transitions per rolled-out dataset (D4RL: 1M).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 1_000_000,
                                    "SAC budget in env steps (= gradient steps): the cap "
                                    "for the medium point and the expert's training length.")
_TARGET = flags.DEFINE_float("target_return", None,
                             "Medium point: stochastic eval return to reach. Default: one "
                             "third of D4RL's expert reference return.")
_SEED = flags.DEFINE_integer("seed", 0, "Build seed (SAC run, rollouts).")
_FORCE = flags.DEFINE_boolean("force", False, "Replace an existing dataset (saved policies "
                              "are reused).")
_RETRAIN = flags.DEFINE_boolean("retrain", False, "Train the SAC behaviour policy even where "
                                "the package ships one for this env, kind and budget.")
_HIDDEN = flags.DEFINE_list("hidden_dims", ["256", "256"], "SAC hidden layer sizes.")
_START = flags.DEFINE_integer("start_steps", 10_000, "Uniform-random warm-up env steps.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "SAC minibatch size.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10_000, "Env steps between evaluations.")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 5, "Episodes per evaluation.")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 8, "Envs side by side in rollouts.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 50_000, "SAC env steps between checkpoints that an interrupted build "
    "resumes from (0: none).")
_MEMBERS = flags.DEFINE_string("members", None, "Roll out the stochastic ensemble policy of "
                               "this members checkpoint (e.g. from "
                               "experiments.import_members) instead of a recipe kind; needs "
                               "--dataset_id.")
_DATASET_ID = flags.DEFINE_string("dataset_id", None, "Id of the --members dataset, e.g. "
                                  "o2o/halfcheetah/authors-members-v0.")
_ALGO = flags.DEFINE_string("algo", "off2on", "The method whose members --members holds "
                            "(their state type; off2on's and imported members are CQL).")
_TABLE = flags.DEFINE_boolean("table", False, "Print a markdown table of the local o2o "
                              "datasets and exit.")

TABLE_HEADER = ("| dataset | transitions | episodes | behaviour return | normalised | "
                "build time | SAC env steps | machine |\n|---|---:|---:|---:|---:|---:|---:|---|")


def table_row(dataset_id: str) -> str:
    meta = store.read_raw_metadata(dataset_id)
    policy = meta.get("o2o_policy") or {}
    build = meta.get("o2o_build") or {}
    steps = policy.get("env_steps")
    return (f"| {dataset_id} | {meta['total_steps']:,} | {meta['total_episodes']:,} | "
            f"{meta.get('o2o_behavior_return', float('nan')):.1f} | "
            f"{meta.get('o2o_behavior_normalized_score', float('nan')):.1f} | "
            f"{format_seconds(meta.get('o2o_build_seconds', build.get('seconds', 0)))} | "
            f"{'' if steps is None else f'{steps:,}'} | {build.get('machine', '')} |")


def local_ids():
    out = []
    for env_name in envs.ENVS:
        for kind in recipes.KINDS:
            ds = recipes.default_id(env_name, kind)
            if store.exists_locally(ds):
                out.append(ds)
    return out


def load_members(env_name: str, members_dir: str, algo_name: str = "off2on"):
    """The policy sampler `(obs, key) -> actions` of one seed's members in a members
    checkpoint, the number of members, and where they came from.

    The checkpoint is read with the state type of the algorithm that made it (`--algo`;
    off2on's members, and those of experiments.import_members, are CQL states), and rolled
    out through that algorithm's online hand-over and `act`: for an ensemble, a sample of the
    moment-matched policy pi_E."""
    import jax
    import jax.numpy as jnp
    from configs import variants
    from o2o_jax import algorithm, checkpoints
    from o2o_jax.agents import stacking
    meta = checkpoints.read_meta(members_dir)
    obs_dim, act_dim = envs.env_dims(env_name)
    if (meta.get("env"), meta.get("obs_dim"), meta.get("act_dim")) != (env_name, obs_dim,
                                                                          act_dim):
        raise app.UsageError(f"members {members_dir!r} are for env {meta.get('env')!r}, not "
                             f"{env_name!r}; pass the --env they act in")
    cfg = variants.task(env_name, "medium", "")
    cfg.algo = algo_name
    a = cfg.agent
    a.num_members, a.hidden_dims = int(meta["num_members"]), tuple(meta["hidden_dims"])
    a.activation = meta["activation"]
    a.actor_layer_norm, a.critic_layer_norm = meta["actor_layer_norm"], meta["critic_layer_norm"]
    algo = algorithm.get(algo_name)
    template = algo.create_members(jax.random.PRNGKey(0), obs_dim, act_dim, cfg)
    template = jax.tree_util.tree_map(lambda x: jnp.repeat(x[None], meta["num_seeds"], 0),
                                      template)
    members = jax.tree_util.tree_map(lambda x: x[0], checkpoints.restore(members_dir, template))
    agent = algo.to_online(members, cfg)
    # The agent is closed over, not passed: a call then hands over two arrays, not the
    # agent's hundred-odd leaves (optimizer states included), 2.5x faster per env step.
    act = jax.jit(lambda obs, key: algo.act(agent, obs, key))
    return (act, stacking.num_stacked(members),
            {"members": members_dir, "algo": algo_name, "num_members": a.num_members,
             "imported": meta.get("imported")})


def main(argv):
    del argv
    if _TABLE.value:
        print(TABLE_HEADER)
        for ds in local_ids():
            print(table_row(ds))
        return
    budget = recipes.make_budget(
        transitions=_TRANSITIONS.value, train_steps=_TRAIN_STEPS.value,
        target_return=_TARGET.value, seed=_SEED.value,
        hidden_dims=tuple(int(h) for h in _HIDDEN.value), batch_size=_BATCH.value,
        start_steps=_START.value, eval_every=_EVAL_EVERY.value,
        eval_episodes=_EVAL_EPISODES.value, num_envs=_NUM_ENVS.value,
        retrain=_RETRAIN.value, checkpoint_every=_CHECKPOINT_EVERY.value)
    if _MEMBERS.value:
        if not _DATASET_ID.value:
            raise app.UsageError("--members needs --dataset_id (the id to write)")
        sample, num_members, info = load_members(_ENV.value, _MEMBERS.value, _ALGO.value)
        dataset_id = recipes.build_from_members(_ENV.value, sample, num_members,
                                                _DATASET_ID.value, budget, info=info,
                                                force=_FORCE.value)
        ds = loader.load(dataset_id, _ENV.value)
        print(f"[{dataset_id}] loads: {ds.num_transitions:,} transitions")
        print(TABLE_HEADER)
        print(table_row(dataset_id))
        return
    # medium-replay before medium: one SAC run gives both (and a forced rebuild of
    # medium-replay retrains, so medium must come after it to share its policy).
    kinds = ([k for k in ("random", "medium-replay", "medium", "expert", "medium-expert")]
             if _KIND.value == "all" else [_KIND.value])
    print(f"Minari root: {store.dataset_root()}", flush=True)
    built = []
    for kind in kinds:
        start = time.time()
        dataset_id = recipes.build(_ENV.value, kind, budget, force=_FORCE.value)
        ds = loader.load(dataset_id, _ENV.value)  # check it loads, and time the load
        print(f"[{dataset_id}] loads: {ds.num_transitions:,} transitions, "
              f"{ds.num_episodes:,} episodes ({format_seconds(time.time() - start)} "
              "in this command)", flush=True)
        built.append(dataset_id)
    print(TABLE_HEADER)
    for ds in built:
        print(table_row(ds))


if __name__ == "__main__":
    from experiments import cli
    cli.run(main, "make_dataset")
