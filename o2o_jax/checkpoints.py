"""Checkpoints: orbax for the arrays, a JSON sidecar that says what they are.

`save` writes <path>/state (orbax, atomic: orbax writes to a temporary folder and renames
it when complete) and <path>/meta.json (written last, atomically). `restore` refuses a
checkpoint that is missing, incomplete, corrupt, or made with a different config, with a
message naming the path and the fix, instead of half-loading it.

In a distributed run every process calls `save` and `restore`: the state is gathered to
host memory on each process and orbax writes it once; the sidecar files are written by the
primary process, and all processes leave `save` only when the checkpoint is complete.
"""
import copy
import glob
import json
import os
import pickle
import shutil
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from o2o_jax import distributed
from o2o_jax.agents import stacking


class CheckpointError(RuntimeError):
    pass


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (disk full, folder not writable, ...)."""


def save(path: str, tree: Any, meta: Dict, extra_files: Optional[Dict[str, bytes]] = None
         ) -> None:
    """Write arrays, then `extra_files` (name -> bytes), then meta.json last: a folder
    without meta.json is an unfinished save and is never loaded."""
    path = os.path.abspath(path)
    meta_path = os.path.join(path, "meta.json")
    primary = distributed.is_primary()
    if distributed.multiprocess():     # shards on several hosts: one whole copy each
        tree = distributed.to_host_tree(tree)
    if primary:
        os.makedirs(path, exist_ok=True)
        if os.path.exists(meta_path):
            os.remove(meta_path)       # the old meta must not vouch for new arrays
    distributed.barrier("o2o_checkpoint_begin")
    state_path = os.path.join(path, "state")
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(state_path, tree, force=True)
        checkpointer.wait_until_finished()
        if primary:
            for name, data in (extra_files or {}).items():
                with open(os.path.join(path, name + ".tmp"), "wb") as f:
                    f.write(data)
                os.replace(os.path.join(path, name + ".tmp"), os.path.join(path, name))
            tmp = meta_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=2, default=str)
            os.replace(tmp, meta_path)
    except Exception as e:  # orbax wraps OSErrors in many types
        raise CheckpointSaveError(
            f"could not write the checkpoint {path} ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:120]}): the disk may be full or the folder not "
            "writable. Free space (or fix the folder) and run the same command again: the "
            "unfinished checkpoint is ignored and the run resumes from the one before") from e
    distributed.barrier("o2o_checkpoint_end")


def read_meta(path: str) -> Dict:
    meta_path = os.path.join(os.path.abspath(path), "meta.json")
    if not os.path.exists(meta_path):
        raise CheckpointError(
            f"no complete checkpoint at {path!r} (missing meta.json: the save did not "
            "finish or this is not a checkpoint folder); point the config at a finished "
            "checkpoint or rerun the phase that writes it")
    try:
        with open(meta_path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path!r} has an unreadable meta.json ({e}); "
                              "delete it and rerun the phase that writes it") from e


def check_meta(path: str, meta: Dict, expect: Optional[Dict]) -> None:
    """Raise CheckpointError if any `expect` entry differs from the saved meta (a saved
    `config` read with the keys added since, `ADDED_KEYS`)."""
    for key, value in (expect or {}).items():
        saved = meta.get(key)
        if key == "config" and isinstance(saved, dict):
            saved = comparable_dict(saved)
        if saved != value:
            if isinstance(saved, dict) and isinstance(value, dict):
                diff = sorted(_diff_keys(saved, value))
                detail = f"{key} differs in {diff[:8]}"
            else:
                detail = f"{key} = {saved!r} there, {value!r} here"
            raise CheckpointError(
                f"checkpoint {path!r} was made with different settings ({detail}); use a "
                "checkpoint made with the same settings, change the config to match, or "
                "start a new run directory")


def _diff_keys(a: Dict, b: Dict, prefix: str = ""):
    for k in set(a) | set(b):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _diff_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            yield f"{prefix}{k}"


def read_extra(path: str, name: str) -> bytes:
    try:
        with open(os.path.join(os.path.abspath(path), name), "rb") as f:
            return f.read()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path!r} lacks {name} ({e}); it is corrupt — "
                              "delete it to resume from the one before") from e


def restore(path: str, template: Any, expect: Optional[Dict] = None) -> Any:
    """Restore arrays shaped like `template`; `expect` entries must equal the saved meta."""
    check_meta(path, read_meta(path), expect)
    multiprocess = distributed.multiprocess()
    if multiprocess:   # read whole arrays on every process, then place them as the template
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), template)
    else:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    state_path = os.path.join(os.path.abspath(path), "state")
    if not os.path.isdir(state_path):
        raise CheckpointError(f"checkpoint {path!r} has meta.json but no state/ folder; it "
                              "is corrupt — delete it to resume from the one before")
    try:
        restored = ocp.StandardCheckpointer().restore(state_path, abstract)
    except Exception as e:  # orbax raises many types for corrupt/mismatched files
        raise CheckpointError(
            f"checkpoint {path!r} could not be restored ({type(e).__name__}): it is corrupt "
            "or from a different config or version. Delete it (a run then resumes from the "
            "checkpoint before) or point the config at another checkpoint; --verbose shows "
            "the reader's own message") from e
    leaves = jax.tree_util.tree_leaves(restored)
    if multiprocess:
        # Arrays spread over several hosts go back to their sharding; process-local ones
        # stay uncommitted, free to be placed like a freshly built state.
        leaves = [(jnp.asarray(np.asarray(x)) if t.is_fully_addressable
                   else jax.device_put(np.asarray(x), t.sharding))
                  if isinstance(t, jax.Array) else x
                  for x, t in zip(leaves, jax.tree_util.tree_leaves(template))]
    # Static fields (apply functions, optimizers, sizes) come from the template.
    try:
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path!r} holds a different state structure "
                              f"({e}); it was made by another config or version") from e


# ----------------------------------------------------------------------------- a run's checkpoints

def comparable_config(cfg) -> dict:
    """The config a checkpoint must share with the run resuming it."""
    return comparable_dict(json.loads(cfg.to_json_best_effort()))


def config_diff(saved: dict, cfg) -> list:
    """The dotted keys in which a saved config (e.g. a run's config.json) differs from
    `cfg`, up to the fields a resume may change (`comparable_config`)."""
    return sorted(_diff_keys(comparable_dict(saved), comparable_config(cfg)))


# Config keys added after runs were saved, with the value that reproduces what those runs
# did: a saved config without one reads as having it (so such runs still resume and still
# count as finished for experiments.compare).
ADDED_KEYS = {"online.train_every": 0}


def comparable_dict(d: dict) -> dict:
    """`comparable_config` of a config already as a dict (e.g. a run's config.json)."""
    d = copy.deepcopy(d)
    for dotted, value in ADDED_KEYS.items():
        *path, last = dotted.split(".")
        node = d
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(last, value)
    for k in ("resume", "run_dir", "run_name", "tensorboard", "distributed"):
        d.pop(k, None)
    d.get("checkpoint", {}).pop("keep", None)
    return d


class CheckpointManager:
    """<run>/checkpoints/<order>/: full state; keeps the newest `keep` complete ones."""

    def __init__(self, root: str, keep: int, config: dict, dataset: Optional[dict] = None):
        """`dataset`: what identifies the offline data the run trains on (id, size, a
        checksum); saved with each checkpoint and compared on resume, so that a dataset
        rebuilt in between is not silently trained on from the middle of a run."""
        self.root, self.keep, self.config, self.dataset = root, keep, config, dataset
        # () -> dict added to every checkpoint's meta (the run's phase times, set by the
        # pipeline once it knows them).
        self.stamp = dict

    def complete(self):
        paths = sorted(glob.glob(os.path.join(self.root, "[0-9]" * 10)))
        return [p for p in paths if os.path.exists(os.path.join(p, "meta.json"))]

    def latest(self) -> Optional[dict]:
        done = self.complete()
        if not done:
            return None
        meta = read_meta(done[-1])
        check_meta(done[-1], meta, {"config": self.config})
        saved = meta.get("dataset")   # (absent in checkpoints of older versions)
        if self.dataset is not None and saved is not None and saved != self.dataset:
            raise CheckpointError(
                f"checkpoint {done[-1]!r} was made on dataset {saved.get('id')!r} of "
                f"{saved.get('transitions'):,} transitions (checksum {saved.get('checksum')}); "
                f"the one loaded now is {self.dataset.get('id')!r} of "
                f"{self.dataset.get('transitions'):,} (checksum "
                f"{self.dataset.get('checksum')}): it was rebuilt or replaced since. Put that "
                "dataset back (MINARI_DATASETS_PATH) to resume, or start a new run "
                "(another run_name)")
        return {**meta, "path": done[-1]}

    def save(self, order: int, tree, meta: dict, extra: Optional[dict] = None):
        path = os.path.join(self.root, f"{order:010d}")
        save(path, tree, {**meta, **self.stamp(), "config": self.config,
                          **({"dataset": self.dataset} if self.dataset is not None else {})},
             extra_files=extra)
        if not distributed.is_primary():
            return
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for unfinished in sorted(glob.glob(os.path.join(self.root, "[0-9]" * 10))):
            if unfinished < path and not os.path.exists(os.path.join(unfinished, "meta.json")):
                shutil.rmtree(unfinished, ignore_errors=True)

    def restore(self, latest: dict, template):
        return restore(latest["path"], template, expect={"config": self.config})


# What a branch (`online.branch_from`) must share with the run it starts from: the state's
# structure, the seeds' streams and the replayed data depend on these ... (`algo` may
# change, to a method whose online state has the same structure, i.e. one that changes
# only the update: the restore checks it, `branch_state_mismatch` names it.)
BRANCH_KEYS = ("env", "seed", "num_seeds", "shard_seeds", "dataset.id",
               "dataset.kind", "agent.num_members", "agent.hidden_dims", "agent.activation",
               "agent.actor_layer_norm", "agent.critic_layer_norm", "online.replay",
               "online.epochs", "online.env_steps_per_epoch", "online.dr_hidden_dims")
# ... and these act only when the online phase starts, so a branch changing them would
# change nothing: refused too, rather than read as "no effect".
BRANCH_START_ONLY_KEYS = ("online.first_epoch_multiplier", "online.seed_fraction",
                          "online.seed_min", "online.init_online_fraction",
                          "online.reset_temperature", "online.init_temperature",
                          "online.fresh_optimizers")


def branch_state_mismatch(source_algo: str, algo: str, error: Exception) -> CheckpointError:
    """The error of a branch whose online state could not be restored: named as an algo
    change when it is one."""
    if source_algo and source_algo != algo:
        return CheckpointError(
            f"online.branch_from: the source run's online state (algo {source_algo!r}) does "
            f"not fit the online state of algo {algo!r} (the restore failed: "
            f"{type(error.__cause__ or error).__name__}). A branch may change the algo only "
            "to a method with the same online state, one that changes only the update (e.g. "
            f"a different target or loss); start a new run from the members for {algo!r} "
            "instead. The source checkpoint is fine: keep it")
    return error if isinstance(error, CheckpointError) else CheckpointError(str(error))


def branch_source(cfg) -> dict:
    """The online checkpoint `online.branch_from` names, checked against `cfg`: its meta
    with `path` and `config`. CheckpointError naming the difference otherwise."""
    path = os.path.abspath(cfg.online.branch_from)
    meta = read_meta(path)
    if meta.get("phase") != "online":
        raise CheckpointError(
            f"online.branch_from={path!r} is a {meta.get('phase', meta.get('kind'))!r} "
            "checkpoint; a branch starts from an online one (<run>/checkpoints/<n> written "
            "in the online phase)")
    theirs, ours = comparable_dict(meta.get("config", {})), comparable_config(cfg)

    def get(d, dotted):
        for k in dotted.split("."):
            d = d.get(k) if isinstance(d, dict) else None
        return d

    def differ(keys):
        return [f"{k} = {get(theirs, k)!r} there, {get(ours, k)!r} here" for k in keys
                if get(theirs, k) != get(ours, k)]
    state = differ(BRANCH_KEYS)
    if state:
        raise CheckpointError(
            f"online.branch_from={path!r} was made with settings a branch must keep ("
            + "; ".join(state) + "); change the config to match them")
    start_only = differ(BRANCH_START_ONLY_KEYS)
    if start_only:
        raise CheckpointError(
            f"online.branch_from={path!r}: " + "; ".join(start_only) + ". These act only "
            "when the online phase starts, so a branch would not change them; keep the "
            "source's values (or start a new run from the members instead)")
    return {**meta, "path": path}


def members_meta(cfg, obs_dim: int, act_dim: int) -> dict:
    """What must match for an offline-members checkpoint to be reused."""
    a = cfg.agent
    return {"kind": "offline_members", "env": cfg.env, "obs_dim": obs_dim, "act_dim": act_dim,
            "num_seeds": cfg.num_seeds, "num_members": a.num_members,
            "hidden_dims": list(a.hidden_dims), "activation": a.activation,
            "actor_layer_norm": a.actor_layer_norm, "critic_layer_norm": a.critic_layer_norm}


def members_expect(cfg, obs_dim: int, act_dim: int,
                   field: str = "online.load_offline_from") -> dict:
    """What the members checkpoint at config `field` (`online.load_offline_from`, or
    `offline.init_from`) must say of itself; checks it (CheckpointError naming the
    difference) and returns it. A checkpoint of one seed's members (e.g. imported by
    experiments.import_members) is accepted for S seeds."""
    path = members_path(cfg, field)
    expect = members_meta(cfg, obs_dim, act_dim)
    try:
        meta = read_meta(path)
        if meta.get("num_seeds") == 1:
            expect["num_seeds"] = 1
        check_meta(path, meta, expect)
    except CheckpointError as e:   # named by the config field that points there
        raise CheckpointError(f"{field}: {e}") from e
    from o2o_jax import algorithm
    post = algorithm.get(cfg.algo).post_offline
    # (Pretraining on from members, `offline.init_from`, runs the method's phase after it.)
    if (post is not None and meta.get("algo") != cfg.algo
            and field == "online.load_offline_from"):
        written = (f"algo {meta['algo']!r}" if meta.get("algo") else
                   "an import or an older version")
        raise CheckpointError(
            f"members {path!r} were written by {written}, not by algo {cfg.algo!r}: they "
            f"have not been through its '{post.label}' phase, which runs only after "
            f"pretraining. Run that phase on them with --config.offline.init_from="
            f"{path} --config.offline.steps=0 (or pretrain on with steps > 0) instead of "
            "--config.online.load_offline_from, or load the offline_members/ of a run "
            f"with --config.algo={cfg.algo}")
    return expect


def members_path(cfg, field: str) -> str:
    section, name = field.split(".")
    return cfg[section][name]


def load_members(cfg, template, obs_dim: int, act_dim: int,
                 field: str = "online.load_offline_from"):
    """The members checkpoint at config `field` (`online.load_offline_from`: fine-tune them;
    `offline.init_from`: pretrain on from them), shaped like `template` [S, N, ...].

    One seed's members are given to every one of the S seeds: S runs from the same
    members."""
    path = members_path(cfg, field)
    expect = members_expect(cfg, obs_dim, act_dim, field)
    if expect["num_seeds"] == 1 and cfg.num_seeds > 1:
        one = restore(path, jax.tree_util.tree_map(lambda x: x[:1], template),
                                  expect=expect)
        print(f"the members of {path} are shared by all {cfg.num_seeds} seeds")
        members = jax.tree_util.tree_map(lambda x: jnp.repeat(x, cfg.num_seeds, axis=0), one)
    else:
        members = restore(path, template, expect=expect)
    unequal = stacking.unequal_counters(members, distributed.to_host)
    if unequal:
        raise CheckpointError(
            f"{field}: the members of {path!r} do not share their step counters ("
            + "; ".join(unequal) + "): members trained together always do, and the "
            "updates and the online hand-over take the first member's counters for all "
            "(TD3's policy delay and OPT's phase: agents.stacking.lockstep; "
            "ensemble.to_ensemble). Load members saved together by one run (its "
            "offline_members/)")
    return members


def read_env_state(path: str):
    try:
        return pickle.loads(read_extra(path, "env_state.pkl"))
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path!r} has an unreadable env_state.pkl ({type(e).__name__}); it "
            "is corrupt — delete it to resume from the one before") from e
