#!/usr/bin/env bash
# The experiments of the method-family issues (15: IQL family, 16: TD3 family, 17:
# Q-ensembles), CPU-scale. Heavy (hours each on a 2-core CPU): run one at a time in the
# background; every run is checkpointed, and running the script again skips finished runs
# and resumes unfinished ones. The first use of a dataset builds it (hopper-medium: SAC to
# the medium point first, ~40 min, unless the package ships the policy).
#
# The paper-budget runs (iql, td3bc, adaptive-bc) want the 1M-transition medium datasets;
# the quick config builds hopper-medium at 100k, and a local dataset is used as it is
# (with a warning): point MINARI_DATASETS_PATH at a folder without a smaller one for them.
#
#   OUT=runs/methods bash experiments/method_runs.sh [iql|td3bc|adaptive-bc|compare-iql|
#                                                     compare-td3|compare-ensembles]
#
# ENVS picks the environments of iql and td3bc (default both of each), e.g. one 1M run
# per sitting: ENVS=walker2d OUT=runs/methods bash experiments/method_runs.sh iql
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/methods}
WHAT=${1:?say which: iql, td3bc, adaptive-bc, compare-iql, compare-td3 or compare-ensembles}
mkdir -p "$OUT"

train() {   # train <config> <run name> <overrides...>
  local config=$1 name=$2; shift 2
  [ -f "$OUT/$name/summary.json" ] && { echo "done: $OUT/$name"; return; }
  python -m experiments.train --config="$config" --config.run_dir="$OUT" \
      --config.run_name="$name" "$@"
}

case "$WHAT" in
  iql)   # IQL offline at the paper's budget (1M), then 100k online steps (issue 15)
    for env in ${ENVS:-hopper walker2d}; do
      train "configs/${env}_medium.py:iql" "iql_${env}_medium_1M" \
          --config.offline.steps=1000000 --config.online.epochs=100
    done ;;
  td3bc) # TD3+BC offline at the paper's budget, then PR-FT on its members (issue 16)
    for env in ${ENVS:-hopper halfcheetah}; do
      train "configs/${env}_medium.py:td3_bc" "td3bc_${env}_medium_1M" \
          --config.offline.steps=1000000 --config.online.epochs=100
      # PR-FT's refinement on those TD3+BC members, then its online phase (no second
      # 1M TD3+BC pretraining: PR-FT's offline stage is TD3+BC itself).
      train "configs/${env}_medium.py:prft" "prft_${env}_medium_1M" --config.offline.steps=0 \
          --config.offline.init_from="$OUT/td3bc_${env}_medium_1M/offline_members" \
          --config.online.epochs=100
    done ;;
  adaptive-bc)  # AdaptiveBC at a reduced budget this CPU allows (issue 16), hopper only.
    # Its 10 critics run at ~49 updates/s on the project's AMD EPYC VM (BENCHMARKS.md,
    # "Branching updates", with stacking.lockstep): the paper budget (1M offline, 250k
    # env steps at UTD 10 = 2.5M updates) is ~20 h per env. Here: 250k offline steps
    # (~85 min) and 25 online epochs = 25k env steps, one call of 10 updates (UTD 10)
    # after each (its preset: no extra first-epoch updates) = 250k updates (~85 min),
    # plus evaluations: about one 180-min session or more. It resumes from its
    # checkpoints if its OUT folder survives to the next session.
    train "configs/hopper_medium.py:adaptive_bc" "adaptive_bc_hopper_medium_250k" \
        --config.offline.steps=250000 --config.online.epochs=25 ;;
  compare-iql)        # the comparison table of issue 15 at the quick budget
    python -m experiments.compare --config=configs/hopper_medium.py:quick --seeds=3 \
        --methods=off2on,cql_ft,sac_ft,iql,calql,pex,famo2o --out="$OUT/compare_iql" ;;
  compare-td3)        # issue 16
    python -m experiments.compare --config=configs/hopper_medium.py:quick --seeds=3 \
        --methods=off2on,td3,td3_bc,redq,adaptive_bc,prft,opt --out="$OUT/compare_td3" ;;
  compare-ensembles)  # issue 17
    python -m experiments.compare --config=configs/hopper_medium.py:quick --seeds=3 \
        --methods=off2on,upq,e2o,apl,apl_td3bc,aca,baq --out="$OUT/compare_ensembles" ;;
  *) echo "unknown: $WHAT" >&2; exit 2 ;;
esac
