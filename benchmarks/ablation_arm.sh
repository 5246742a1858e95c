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
run -m phyjax.main --config=configs/benchmark.py --workdir="runs/abl/$name" \
  "--config.methods=(\"$method\",)" --config.seed="$seed" "$@" > "runs/$name.log" 2>&1
for sub in train test; do
  run benchmarks/refine_sweep.py --run "runs/abl/$name" --method "$method" --subjects "$sub" \
    --data-seed 1 --setting "$name:enabled=False,tta=flip,calibrate=$calibrate" \
    --out "runs/val/${name}_validation_$sub.md" >> "runs/$name.log" 2>&1
done
echo DONE >> "runs/$name.log"
