import os
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Many tests compile the same small programs in different processes (xdist workers,
# subprocess runs of the entry points): share compilations through JAX's persistent cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "o2o_jax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("MUJOCO_GL", "egl")
# The tests' programs are tiny and run a few steps, so compiling them is most of the suite's
# time on a cold cache (CI's, on the CPU): XLA compiles them here without its LLVM
# optimisations. Measured side by side on the 2-core AMD EPYC VM with empty caches, four of
# the method smoke tests took 106 s with the default flags and 52 s with these. The library
# itself (experiments, benchmarks) compiles with XLA's defaults; the tests' numbers are
# checked against independent computations at tolerances either level meets.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

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
