import os
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Many tests compile the same small programs in different processes (xdist workers,
# subprocess runs of the entry points): share compilations through JAX's persistent cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "o2o_jax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("MUJOCO_GL", "egl")

import ml_collections  # noqa: E402
import pytest  # noqa: E402

from configs import base  # noqa: E402


@pytest.fixture
def tiny_agent_cfg() -> ml_collections.ConfigDict:
    c = base.get_agent_config()
    c.hidden_dims = (16, 16)
    c.bc_steps = 0
    return c


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    """A tiny random hopper dataset, built once per test process by the recipe."""
    root = str(tmp_path_factory.mktemp("minari"))
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = root
    from o2o_jax import data
    data.ensure("hopper", "random", build_transitions=1500, seed=0)
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old
