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


def save(path: str, tree: Any, meta: Dict, extra_files: Optional[Dict[str, bytes]] = None
         ) -> None:
    """Write arrays, then `extra_files` (name -> bytes), then meta.json last: a folder
    without meta.json is an unfinished save and is never loaded."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    meta_path = os.path.join(path, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)           # the old meta must not vouch for new arrays
    state_path = os.path.join(path, "state")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(state_path, tree, force=True)
    checkpointer.wait_until_finished()
    for name, data in (extra_files or {}).items():
        with open(os.path.join(path, name + ".tmp"), "wb") as f:
            f.write(data)
        os.replace(os.path.join(path, name + ".tmp"), os.path.join(path, name))
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


def check_meta(path: str, meta: Dict, expect: Optional[Dict]) -> None:
    """Raise CheckpointError if any `expect` entry differs from the saved meta."""
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            saved = meta.get(key)
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
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    state_path = os.path.join(os.path.abspath(path), "state")
    if not os.path.isdir(state_path):
        raise CheckpointError(f"checkpoint {path!r} has meta.json but no state/ folder; it "
                              "is corrupt — delete it to resume from the one before")
    try:
        restored = ocp.StandardCheckpointer().restore(state_path, abstract)
    except Exception as e:  # orbax raises many types for corrupt/mismatched files
        raise CheckpointError(
            f"checkpoint {path!r} could not be restored ({type(e).__name__}: "
            f"{str(e)[:300]}); it is corrupt or from a different config — delete it or "
            "point the config at another checkpoint") from e
    # Static fields (apply functions, optimizers, sizes) come from the template.
    try:
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                            jax.tree_util.tree_leaves(restored))
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path!r} holds a different state structure "
                              f"({e}); it was made by another config or version") from e
