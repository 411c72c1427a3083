"""Checkpoints: orbax for the arrays, a JSON sidecar that says what they are.

`save` writes <path>/state (orbax, atomic: orbax writes to a temporary folder and renames
it when complete) and <path>/meta.json (written last, atomically). `restore` refuses a
checkpoint that is missing, incomplete, corrupt, or made with a different config, with a
message naming the path and the fix, instead of half-loading it.
"""
import json
import os
from typing import Any, Dict, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    pass


def save(path: str, tree: Any, meta: Dict) -> None:
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    meta_path = os.path.join(path, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)           # the old meta must not vouch for new arrays
    state_path = os.path.join(path, "state")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(state_path, tree, force=True)
    checkpointer.wait_until_finished()
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, default=str)
    os.replace(tmp, meta_path)


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


def restore(path: str, template: Any, expect: Optional[Dict] = None) -> Any:
    """Restore arrays shaped like `template`; `expect` entries must equal the saved meta."""
    meta = read_meta(path)
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path!r} was made with {key} = {meta.get(key)!r}, but this run "
                f"has {key} = {value!r}; use a checkpoint made with the same settings or "
                "change the config to match")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    try:
        return ocp.StandardCheckpointer().restore(
            os.path.join(os.path.abspath(path), "state"), abstract)
    except Exception as e:  # orbax raises many types for corrupt/mismatched files
        raise CheckpointError(
            f"checkpoint {path!r} could not be restored ({type(e).__name__}: "
            f"{str(e)[:300]}); it is corrupt or from a different config — delete it or "
            "point the config at another checkpoint") from e
