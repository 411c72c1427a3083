#!/usr/bin/env bash
# The behaviour policies the package ships (issue 14), built with the recipe's defaults
# (seed 0, 2x256 SAC, 1M transitions per rolled-out set), then copied into
# o2o_jax/data/policies/ with their provenance by experiments.ship_policy (commit those
# two files per policy). Heavy: run it in the background, one job at a time. A SAC run
# checkpoints every 50k env steps; running the same line again resumes it, and a finished
# build is kept (its dataset exists), so the script can be rerun until everything is done.
#
#   bash experiments/ship_runs.sh medium <env>   # SAC to the medium point (walker2d)
#   bash experiments/ship_runs.sh expert <env>   # the run continued to 1M env steps
#   bash experiments/ship_runs.sh all
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?say medium <env>, expert <env> or all}

ship() {   # ship <env> <role>: build the role's set (training its policy if needed), ship it
  local env=$1 role=$2
  python -m experiments.make_dataset --env="$env" --kind="$role"
  python -m experiments.ship_policy --env="$env" --role="$role"
  if [ "$role" = expert ]; then   # the set that needs both policies
    python -m experiments.make_dataset --env="$env" --kind=medium-expert
  fi
}

case "$WHAT" in
  medium|expert) ship "${2:?which env: hopper, halfcheetah or walker2d}" "$WHAT" ;;
  all)
    ship walker2d medium
    for env in hopper halfcheetah walker2d; do ship "$env" expert; done ;;
  *) echo "unknown: $WHAT" >&2; exit 2 ;;
esac
