#!/usr/bin/env bash
# The GPU checks as one prepared command, for a session that is lent an accelerator.
#
# Here (a machine with PyPI), once:   bash experiments/gpu_check.sh wheels
#   downloads into .whl/ (git-ignored, ~26 MB) the packages the device image lacks
#   (gymnasium, mujoco, minari, ml-collections and their missing needs), for its Python 3.12.
# There (device tool `run`, carry [".whl"], timeout_s 600):   bash experiments/gpu_check.sh run
#   installs them into /tmp/site and runs `python -m experiments.bench` at the paper's sizes:
#   dense matmul rate, SAC / CQL / CQL-ensemble updates/s, the fused online step beside the
#   plain one, vmapped seeds S = 1, 2, 4, 8, and the estimated paper-scale hopper-medium
#   pipeline time (the GPU targets: <= 15 min; S = 8 in <= 2x the time of S = 1).
#   Output goes to $OUT/bench.txt. Add the table to BENCHMARKS.md under "GPU".
# Not yet run on a GPU: no session so far was lent one.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  wheels)
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${plat[@]}" -d .whl \
      gymnasium==1.4.0 farama-notifications==0.0.6 minari==0.5.4 ml-collections==1.1.0 \
      mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 glfw==2.11.0 pyopengl==3.1.10
    du -sh .whl ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" MUJOCO_GL=egl PYTHONUNBUFFERED=1
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "${OUT:-.}/bench.txt"
    python3 -m experiments.bench --sections=matmul,agents,online,seeds --reps=5 2>&1 \
      | tee -a "${OUT:-.}/bench.txt" ;;
  *)
    echo "usage: bash experiments/gpu_check.sh wheels|run  (see the comment at the top)" >&2
    exit 2 ;;
esac
