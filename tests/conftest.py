import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
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
