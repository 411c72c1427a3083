"""networks: the orthogonal initialiser's vmap (a loop, never a batched LAPACK call)."""
import re

import flax.linen as nn
import jax
import numpy as np

from o2o_jax import networks
from o2o_jax.agents import iql


def test_orthogonal_under_nested_vmap_equals_one_matrix_at_a_time():
    """Seeds x members of kernels: the same values as flax's initialiser called once per
    key, and orthogonal columns of norm sqrt 2 (checked in NumPy)."""
    init = networks.orthogonal(np.sqrt(2.0))
    flax_init = nn.initializers.orthogonal(np.sqrt(2.0))
    keys = jax.random.split(jax.random.PRNGKey(0), 6).reshape(2, 3, 2)
    out = np.asarray(jax.jit(jax.vmap(jax.vmap(lambda k: init(k, (16, 5)))))(keys))
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(out[i, j], np.asarray(flax_init(keys[i, j], (16, 5))))
            q = out[i, j].astype(np.float64)
            np.testing.assert_allclose(q.T @ q, 2.0 * np.eye(5), atol=1e-5)


def _lapack_calls(compiled_text):
    """The result shapes of every LAPACK custom call in a compiled program's HLO."""
    return re.findall(r"= \(?([a-z0-9]+\[[0-9,]*\])[^\n]*custom_call_target=\"lapack_",
                      compiled_text)


def test_members_creation_under_seed_vmap_runs_no_batched_lapack():
    """The hang this prevents: jaxlib 0.10's batched LAPACK kernels wait on XLA's
    intra-op pool for their own batch tasks, and as many concurrent batched QRs as the pool
    has threads never finish. Created as the pipeline does (jit of vmap over seeds of the
    method's vmap over members), IQL's orthogonal kernels must be QR'd one matrix at a
    time. Fails with flax's initialiser (QRs of f32[2,2,...])."""
    from configs import base
    cfg = base.get_config().iql
    cfg.hidden_dims = (8, 8)
    assert cfg.init == "orthogonal"
    create = jax.jit(jax.vmap(lambda k: iql.create_members(k, 3, 2, cfg, num_members=2)))
    text = create.lower(jax.random.split(jax.random.PRNGKey(0), 2)).compile().as_text()
    shapes = _lapack_calls(text)
    assert shapes, "no LAPACK call found: the check would pass vacuously"
    batched = [s for s in shapes if s.count(",") != 1]
    assert not batched, f"batched LAPACK calls in member creation: {batched}"
