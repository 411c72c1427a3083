#!/usr/bin/env bash
# Issue 11's ensemble-size sweep at the quick budget (hopper-medium, 2x64, 10k CQL steps):
# for N in {2, 5, 10}, pretrain N members per seed, then from the very same members
#   (a) fine-tune with off2on, evaluating every 250 updates (250 env steps + 250 updates
#       per epoch, no first-epoch multiplier) up to 2000, and
#   (b) the control: continue offline CQL for 2000 steps (offline.init_from), evaluating
#       every 250.
# Does the drop after 250 and 2000 updates shrink as N grows? `experiments.drop_table`
# writes the table, CSV and figure. Every step is checkpointed; running the script again
# skips what is done and resumes what is not (one job at a time).
#
#   OUT=runs/drop_sweep SEEDS=2 EPISODES=10 bash experiments/drop_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/drop_sweep}
SEEDS=${SEEDS:-2}
EPISODES=${EPISODES:-10}
SIZES=${SIZES:-2 5 10}
mkdir -p "$OUT"

train() {   # train <run name> <overrides...>: skips a finished run, resumes an unfinished one
    local name=$1; shift
    [ -f "$OUT/$name/summary.json" ] && { echo "done: $OUT/$name"; return; }
    python -m experiments.train --config=configs/hopper_medium.py:quick \
        --config.run_dir="$OUT" --config.run_name="$name" --config.num_seeds="$SEEDS" "$@"
}

for n in $SIZES; do
  members="$OUT/pretrain_n$n/offline_members"
  train "pretrain_n$n" --config.agent.num_members="$n" --config.online.epochs=0
  train "off2on_n$n" --config.agent.num_members="$n" --config.online.load_offline_from="$members" \
      --config.online.epochs=8 --config.online.env_steps_per_epoch=250 \
      --config.online.updates_per_epoch=250 --config.online.first_epoch_multiplier=1 \
      --config.online.eval_episodes="$EPISODES"
  train "cql_n$n" --config.agent.num_members="$n" --config.offline.init_from="$members" \
      --config.offline.steps=2000 --config.offline.eval_interval=250 \
      --config.offline.eval_episodes="$EPISODES" --config.online.epochs=0
done
python -m experiments.drop_table --sweep_dir="$OUT" --sizes="${SIZES// /,}" \
    --out="${FIGURES:-$OUT/figures}"
