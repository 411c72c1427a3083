#!/usr/bin/env bash
# The control behind RESULTS.md's "critic divergence" question (issue 11): our halfcheetah
# medium-v0 UCB run (seed 0) had its critic loss grow from epoch ~77 and its score collapse
# at epochs 88-120. (1) Rerun it with a checkpoint every 5 epochs, kept, to epoch STOP
# (is it reproducible: the same rows as the first run?); (2) branch from the checkpoint at
# epoch FROM with one setting changed each, for BRANCH_EPOCHS epochs: which change stops the
# divergence? (3) `python -m experiments.td_errors $OUT/rerun` says where the TD error
# sits at each kept checkpoint (per member; online vs offline; how concentrated). Heavy
# (~20 s an epoch on a 2-core CPU): one job at a time, in the background; a finished part
# is skipped when the script runs again.
#
#   MEMBERS=<imported members dir> OUT=runs/collapse [FROM=75 STOP=95 BRANCH_EPOCHS=20] \
#       bash experiments/collapse_control.sh [rerun|branches]
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:?set MEMBERS to the imported members (experiments.import_members)}
OUT=${OUT:-runs/collapse}
FROM=${FROM:-75}; STOP=${STOP:-95}; BRANCH_EPOCHS=${BRANCH_EPOCHS:-20}
WHAT=${1:-all}
mkdir -p "$OUT"
COMMON=(--config=configs/halfcheetah_medium.py:reference --config.run_dir="$OUT"
        --config.dataset.id=o2o/halfcheetah/medium-v0 --config.seed=0
        --config.online.explore_ucb_lambda=100 --config.online.load_offline_from="$MEMBERS"
        --config.checkpoint.every_online_epochs=5 --config.checkpoint.keep=60)

reached() {   # reached <run dir> <epoch>: its metrics have the epoch's online row
  [ -f "$1/metrics.csv" ] && python - "$1/metrics.csv" "$2" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["phase"] == "online"]
sys.exit(0 if rows and float(rows[-1]["epoch"]) >= float(sys.argv[2]) else 1)
PY
}

until_epoch() {   # until_epoch <run dir> <epoch> <command...>: run until the epoch's row
  local dir=$1 stop=$2; shift 2
  if reached "$dir" "$stop"; then echo "done: $dir (epoch $stop)"; return; fi
  "$@" & local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 10
    if reached "$dir" "$stop"
    then kill "$pid"; wait "$pid" || true; echo "stopped $dir at epoch $stop"; return; fi
  done
  wait "$pid"   # it ended by itself: its status (a crash stops the script under set -e)
}

if [ "$WHAT" = all ] || [ "$WHAT" = rerun ]; then
  until_epoch "$OUT/rerun" "$STOP" python -m experiments.train "${COMMON[@]}" \
      --config.run_name=rerun
fi
if [ "$WHAT" = all ] || [ "$WHAT" = branches ]; then
  src=$(python - "$OUT/rerun/checkpoints" "$FROM" <<'PY'
import glob, json, os, sys
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*", "meta.json"))):
    m = json.load(open(p))
    if m.get("phase") == "online" and m["epoch"] == int(sys.argv[2]):
        print(os.path.dirname(p))
        break
PY
)
  [ -n "$src" ] || { echo "no online checkpoint at epoch $FROM under $OUT/rerun" >&2; exit 2; }
  end=$((FROM + BRANCH_EPOCHS))
  # name: the one setting changed. (flat_priorities: T = 1e6 makes w^(1/T) ~ 1 for w > 0,
  # but the density-ratio net's ReLU output gives w = 0 exactly to many items, which stay
  # at the clip floor 1e-3: two-level priorities, not uniform replay. upq_*: Off2OnRL's
  # state with UPQ's target, a penalty on the members' disagreement.)
  for spec in "flat_priorities --config.online.priority_temperature=1000000" \
              "one_sample_exploration --config.online.explore_ucb_lambda=0" \
              "critic_lr_1e-4 --config.online.critic_lr=0.0001" \
              "upq_beta0.1 --config.algo=upq --config.upq.beta=0.1" \
              "upq_beta0.01 --config.algo=upq --config.upq.beta=0.01"; do
    set -- $spec
    name=$1; shift
    until_epoch "$OUT/$name" "$end" python -m experiments.train "${COMMON[@]}" \
        --config.run_name="$name" --config.online.branch_from="$src" "$@"
  done
fi
