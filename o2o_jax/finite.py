"""Non-finite values stop a run: checked at every log point, on values already fetched.

A NaN or inf in a loss or an evaluation return means the run has diverged (or its data
hold values float32 cannot carry). Going on would only write NaN rows and a summary
nobody can trust, so the run stops with `NonFiniteError` naming the quantity, where it
was seen and the likely cause; checkpoints are written only before a check passes, so the
last one kept is good. `json_safe` turns NaN/inf into null for JSON files.
"""
import math
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np


class NonFiniteError(FloatingPointError):
    pass


LIKELY_CAUSE = ("likely causes: rewards or observations too large for float32 arithmetic "
                "(check the dataset's magnitudes), or diverging critics (lower "
                "agent.critic_lr / online.critic_lr, or check the reward scale)")


def check(values: Dict[str, Any], where: str, seeds: Optional[Sequence[int]] = None,
          last_checkpoint: Optional[Callable[[], Optional[str]]] = None) -> None:
    """Raise NonFiniteError if any of `values` (arrays with a leading seed axis, or
    scalars) holds NaN or inf. `where` names the point, e.g. "online epoch 12";
    `last_checkpoint()` (asked only on a failure) names the checkpoint kept."""
    for name, value in values.items():
        if isinstance(value, str):
            continue
        arr = np.asarray(value, dtype=float)
        if arr.size == 0 or np.all(np.isfinite(arr)):
            continue
        bad = arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)
        rows = [i for i in range(bad.shape[0]) if not np.all(np.isfinite(bad[i]))]
        seed_txt = ""
        if seeds is not None and arr.ndim and len(seeds) == arr.shape[0]:
            seed_txt = f" (seed {', '.join(str(seeds[i]) for i in rows)})"
        first = bad[rows[0]][~np.isfinite(bad[rows[0]])][0]
        last = last_checkpoint() if last_checkpoint is not None else None
        kept = (f"The last good checkpoint is kept ({last}); a rerun of the same "
                "command resumes from it" if last else
                "No checkpoint of this run was written before it")
        raise NonFiniteError(f"{name} is {first} at {where}{seed_txt}: the run stopped. "
                             f"{LIKELY_CAUSE}. {kept}")


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN/inf float replaced by None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj
