"""The base experiment config. Task files override a few fields; variants via `:name`.

Sections: top level (seed, env, run dir), `dataset`, `agent` (networks and losses),
`offline` (CQL pretraining), `online` (fine-tuning with balanced replay).
Defaults are the paper-scale reference values of ../shared/spec/off2on.md.
"""
import ml_collections


def get_agent_config() -> ml_collections.ConfigDict:
    """Networks, optimisers and loss knobs shared by every SAC-family agent (the defaults
    live with the agent: o2o_jax/agents/actor_critic.py `default_config`)."""
    from o2o_jax.agents import actor_critic
    return actor_critic.default_config()


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.env = "hopper"
    c.run_dir = "runs"           # runs go to <run_dir>/<run_name>
    c.run_name = ""              # "" -> <env>-<dataset kind>-<algo>-seed<seed>-<time>
    c.algo = "off2on"            # a registered method: o2o_jax/agents/<name>.py
    c.num_seeds = 1              # S seeds vmapped in one program: seeds seed..seed+S-1
    c.shard_seeds = True         # several devices: shard seeds across them (1 seed: members)
    c.resume = False             # continue the newest run of this experiment
    c.tensorboard = False        # also write <run>/tensorboard/seed<i>/ event files
    # Several hosts as one run (o2o_jax/distributed.py): start the same command on every
    # host with its process_id, or auto=True under SLURM / Open MPI / Kubernetes.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""   # "host:port" of process 0; "": one process
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.auto = False               # let jax.distributed read the cluster's env

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_offline_steps = 100_000   # 0: only at the end of the phase
    c.checkpoint.every_online_epochs = 10        # 0: never
    c.checkpoint.keep = 2                        # newest complete checkpoints kept

    c.dataset = ml_collections.ConfigDict()
    c.dataset.id = ""            # "" -> o2o/<env>/<kind>-v0, our recipe's id
    c.dataset.kind = "medium"
    c.dataset.build_if_missing = True
    c.dataset.build_transitions = 1_000_000   # size if it has to be built
    c.dataset.build_seed = 0
    # Recipe budget if it has to be built (None: the recipe's default); see
    # `python -m experiments.make_dataset --help`.
    c.dataset.build_budget = ml_collections.ConfigDict({
        "train_steps": ml_collections.config_dict.placeholder(int),
        "target_return": ml_collections.config_dict.placeholder(float),
        "start_steps": ml_collections.config_dict.placeholder(int),
        "eval_every": ml_collections.config_dict.placeholder(int),
        "hidden_dims": ml_collections.config_dict.placeholder(tuple)})

    c.agent = get_agent_config()
    # Each method's own section (awac, bcq, fqe, ...), from its registration; its module
    # documents the source values.
    from o2o_jax import algorithm
    for algo in algorithm.all_algorithms():
        if algo.config_section is not None:
            name, default = algo.config_section
            c[name] = default()

    c.offline = ml_collections.ConfigDict()
    c.offline.steps = 1_000_000  # gradient steps per member
    c.offline.batch_size = 256
    c.offline.chunk = 1_000      # updates per compiled call (lax.scan)
    c.offline.eval_interval = 50_000
    c.offline.eval_episodes = 10
    c.offline.save_members = True   # orbax checkpoint of the N members after pretraining
    # A members checkpoint (a run's offline_members/, or experiments.import_members'):
    # pretraining starts from these members, optimiser states included, and evaluates them
    # first (step 0), instead of from fresh ones; "": fresh. E.g. the continued-offline
    # control beside fine-tuning the same members (experiments/drop_sweep.sh).
    c.offline.init_from = ""

    c.online = ml_collections.ConfigDict()
    c.online.epochs = 250               # x env_steps_per_epoch = online env steps
    c.online.env_steps_per_epoch = 1_000
    c.online.updates_per_epoch = 1_000  # UTD 1
    c.online.first_epoch_multiplier = 5  # reference: 5 to 10
    # Env steps between training calls within an epoch, each call running its share of
    # updates_per_epoch: 0 trains once after the epoch's collection (rlkit's loop, the
    # authors'); 1 after every env step (REDQ's and AdaptiveBC's code: their presets).
    # first_epoch_multiplier then multiplies every call of the first epoch (k = 1 and 5:
    # 5 calls after each env step, on a nearly empty buffer); those presets set it to 1.
    c.online.train_every = 0
    c.online.batch_size = 256
    c.online.dr_batch_size = 256
    c.online.replay = "balanced"        # balanced | uniform | online_only | mixed | oorb
    c.online.offline_ratio = 0.5        # mixed replay: offline share of every RL batch
    c.online.oorb_window = 20_000       # oorb replay: the online buffer's newest items (ours)
    c.online.oorb_online_prob = 0.5     # oorb replay: P(batch from the online buffer) (ours)
    # The online buffer starts with max(seed_fraction x M, seed_min) random offline
    # transitions (AdaptiveBC's seed data; 0: empty). They age out like online data.
    c.online.seed_fraction = 0.0
    c.online.seed_min = 0
    # f: online share of the sampling mass once epoch 0's env steps are in (balanced replay;
    # with train_every, epoch 0's earlier calls see a smaller share, as its steps arrive).
    c.online.init_online_fraction = 0.5
    c.online.priority_temperature = 5.0  # T
    c.online.fifo_window = 250_000      # online DR batches come from the newest items
    c.online.dr_hidden_dims = (256, 256)
    c.online.dr_lr = 3e-4
    c.online.eval_episodes = 10         # per epoch, deterministic pi_E
    c.online.reset_temperature = True   # (code): alpha = 1 at the start of fine-tuning
    c.online.init_temperature = 1.0
    c.online.fresh_optimizers = True    # (code): new Adam states for fine-tuning
    # Learning rates of the online optimizers (code: policy_lr = alpha lr = qf_lr = 3e-4
    # online, while offline CQL trains its actor and alpha at 1e-4).
    c.online.actor_lr = 3e-4
    c.online.critic_lr = 3e-4
    c.online.temp_lr = 3e-4
    c.online.cql_weight = 0.0           # alpha_cql online; only algo cql_ft uses it (> 0)
    c.online.backup_entropy = True
    # Exploration: 0 = one sample of pi_E (paper); > 0 = the public rerun fork's pick among
    # the members' own samples by target-Q1 mean + lambda * std (it used 100).
    c.online.explore_ucb_lambda = 0.0
    c.online.load_offline_from = ""     # members checkpoint dir: skip pretraining
    # Another run's online checkpoint (<run>/checkpoints/<n>): start this run there (its
    # state, keys, env and metrics so far) with this config, e.g. to test a changed
    # setting from the same point (no pretraining: the members are in the checkpoint).
    # Its env, seeds, networks, replay mode and online size must match; the algo may change
    # to one with the same online state (e.g. off2on -> upq, another target).
    c.online.branch_from = ""
    return c
