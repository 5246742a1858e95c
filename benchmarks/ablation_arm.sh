#!/bin/bash
# One arm of a PhyCHarm ablation (docs/phycharm_ablation.md): train the benchmark's PhyCHarm
# alone with FLAGS on one CPU core, then score it on the validation heads (the train and test
# halves of data.seed 1, benchmarks/refine_sweep.py) with the default inference settings.
#
# usage: bash benchmarks/ablation_arm.sh CORE NAME SEED [FLAGS...]
#   -> runs/abl/NAME (the run), runs/val/NAME_validation_{train,test}.{md,csv}, runs/NAME.log
#      (ends with DONE when every part succeeded)
# METHOD=phycharm_unpaired: that method instead (physics-made pairs; it has no site maps, so
# its validation setting is calibrate=none unless CALIBRATE says otherwise).
# FROM=RUN: the arm starts from a copy of that run's config and checkpoints (its reports are
# not copied), so the network resumes at its last step and only what is learned after
# training changes -- for FLAGS that act there (config.model.calibrate_simulated): the same
# network on both sides, no seed noise between them. FLAGS must then repeat RUN's own.
# ALSO="NAME2:KEY=VALUE,...": the validation also scores a second setting of the same network
# (the default's inference settings plus those keys, e.g. ALSO="nodn:denoise=False"), so that
# the two are compared on the same outputs (benchmarks/refine_sweep.py --setting).
# ~16 min of training and test-head evaluation plus ~12 min of validation on one idle core.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash benchmarks/ablation_arm.sh CORE NAME SEED [FLAGS...]" >&2; exit 2
fi
core=$1; name=$2; seed=$3; shift 3
method=${METHOD:-phycharm}
calibrate=${CALIBRATE:-$([ "$method" = phycharm ] && echo sites || echo none)}
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
run() { taskset -c "$core" env JAX_PLATFORMS=cpu "$py" "$@"; }
mkdir -p runs/abl runs/val
if [ -n "${FROM:-}" ]; then
  [ -e "runs/abl/$name" ] && { echo "runs/abl/$name exists; FROM copies into a new arm" >&2; exit 2; }
  mkdir -p "runs/abl/$name/$method"
  cp "$FROM/config.json" "runs/abl/$name/"
  cp -r "$FROM/$method/checkpoints" "runs/abl/$name/$method/"
  cp "$FROM/$method/train_log.csv" "runs/abl/$name/$method/"
fi
run -m phyjax.main --config=configs/benchmark.py --workdir="runs/abl/$name" \
  "--config.methods=(\"$method\",)" --config.seed="$seed" "$@" > "runs/$name.log" 2>&1
also=()
if [ -n "${ALSO:-}" ]; then
  also=(--setting "${ALSO%%:*}:enabled=False,tta=flip,calibrate=$calibrate,${ALSO#*:}")
fi
for sub in train test; do
  run benchmarks/refine_sweep.py --run "runs/abl/$name" --method "$method" --subjects "$sub" \
    --data-seed 1 --setting "$name:enabled=False,tta=flip,calibrate=$calibrate" "${also[@]}" \
    --out "runs/val/${name}_validation_$sub.md" >> "runs/$name.log" 2>&1
done
echo DONE >> "runs/$name.log"
