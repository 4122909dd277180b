#!/usr/bin/env bash
# Every GPU measurement BENCHMARKS.md quotes, in one run that ends well inside 10 minutes:
# the finite difference's accuracy on CUDA, the step costs (both regulariser paths, batch 128
# and 512, bf16 off and on, torch.compile), how many trials fit on a GPU (ResNet-20 and
# ResNet-18), and an end-to-end `gradreg train` on CUDA. It needs gradreg and torch alone
# (no Ray, MLflow or Optuna), run from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh
#
# Each part has its own time limit, so one slow part cannot take the others' time; every
# part writes its table to $OUT as it goes.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a limit, its output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
    nproc
} 2>&1 | tee "$OUT/env.txt"

part accuracy 90 $PY benchmarks/finite_difference_accuracy.py --device cuda
part step_cost 260 $PY benchmarks/gpu_step_cost.py --batch-sizes 128,512 --compile \
    --steps 15 --warmup 3 --json "$OUT/step_cost.json"
part packing_resnet20 80 $PY benchmarks/gpu_packing.py --model resnet20 --counts 1,2,4,8 \
    --train-size 10000 --epochs 2
part packing_resnet18 90 $PY benchmarks/gpu_packing.py --model resnet18 --counts 1,2,4 \
    --train-size 10000 --epochs 2
part train_e2e 40 $PY -m gradreg train --dataset digits --method vl --variance uniform \
    --noise-scale 0.01 --epochs 3 --device cuda --quiet
