#!/usr/bin/env bash
# GPU measurements for BENCHMARKS.md in one run that ends well inside 10 minutes (the device
# tool's limit for one command). It needs gradreg and torch alone (no Ray, MLflow or Optuna),
# run from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh                    # issue 29's parts
#     OUT=/some/folder PARTS="step_cost packing" bash benchmarks/gpu_session.sh  # issue 15's
#
# Issue 29's parts (the default, 6 minutes at most):
#   variants_resnet20, variants_resnet18: every way of taking VL's regulariser gradient
#     (benchmarks/regulariser_grad_variants.py), each one's error against float64 autograd on
#     the same batch, ms/step, peak memory and FLOPs against MAP's, at batch 128 and 512,
#     with torch's TF32 flags as a user's default run has them (TF32 convolutions);
#   accuracy: the finite difference's accuracy table (benchmarks/finite_difference_accuracy.py);
#   train_e2e: `gradreg train` end to end on CUDA, with `tf32: off` for the run.
# Issue 15's parts, which BENCHMARKS.md also quotes, when PARTS names them: step_cost (every
# method's step cost, bf16 on and off, torch.compile), packing_resnet20 and packing_resnet18
# (trials per GPU). PARTS="all" runs all seven: up to 13 minutes, too long for one command.
#
# Each part has its own time limit, so one slow part cannot take the others' time; every
# part writes its table to $OUT as it goes. SMOKE=1 runs every named part on the CPU at tiny
# sizes, as tests/benchmarks/test_benchmark_scripts.py does, so that a GPU session finds
# each command working.
set -uo pipefail
OUT=${OUT:-gpu-results}
PARTS=${PARTS:-variants_resnet20 variants_resnet18 accuracy train_e2e}
if [[ $PARTS == all ]]; then
    PARTS="variants_resnet20 variants_resnet18 accuracy train_e2e step_cost packing_resnet20"
    PARTS+=" packing_resnet18"
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}

if [[ ${SMOKE:-0} == 1 ]]; then  # tiny sizes on the CPU: every command, none of the figures
    DEVICE=cpu
    VARIANTS=(--image-size 8 --width 4 --batch-sizes 4 --steps 1 --warmup 0)
    ACCURACY=(--networks mlp)
    STEP_COST=(--model resnet20 --width 2 --batch-sizes 4 --steps 1 --warmup 1)
    PACKING20=(--counts 1 --train-size 200 --epochs 1 --width 2)
    PACKING18=("${PACKING20[@]}")
    TRAIN=(--epochs 1)
else
    DEVICE=cuda
    VARIANTS=(--batch-sizes 128,512 --steps 10 --warmup 3)
    ACCURACY=()
    STEP_COST=(--batch-sizes 128,512 --compile --steps 15 --warmup 3)
    PACKING20=(--counts 1,2,4,8 --train-size 10000 --epochs 2)
    PACKING18=(--counts 1,2,4 --train-size 10000 --epochs 2)
    TRAIN=(--epochs 3)
fi

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a limit, its output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    [[ " $PARTS " == *" $name "* ]] || return 0
    echo "== $name (limit ${limit} s)"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"
    $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
    nproc
    echo "parts: $PARTS"
} 2>&1 | tee "$OUT/env.txt"

# issue 29 (budgets: 150 + 150 + 60 + 40 s)
part variants_resnet20 150 $PY benchmarks/regulariser_grad_variants.py --device "$DEVICE" \
    --models resnet20 "${VARIANTS[@]}" --json "$OUT/variants_resnet20.json"
part variants_resnet18 150 $PY benchmarks/regulariser_grad_variants.py --device "$DEVICE" \
    --models resnet18 "${VARIANTS[@]}" --json "$OUT/variants_resnet18.json"
part accuracy 60 $PY benchmarks/finite_difference_accuracy.py --device "$DEVICE" \
    "${ACCURACY[@]}"
part train_e2e 40 $PY -m gradreg train --dataset digits --method vl --variance uniform \
    --noise-scale 0.01 --device "$DEVICE" --tf32 off "${TRAIN[@]}" --quiet
# issue 15 (budgets: 260 + 80 + 90 s)
part step_cost 260 $PY benchmarks/gpu_step_cost.py --device "$DEVICE" "${STEP_COST[@]}" \
    --json "$OUT/step_cost.json"
part packing_resnet20 80 $PY benchmarks/gpu_packing.py --device "$DEVICE" --model resnet20 \
    "${PACKING20[@]}"
part packing_resnet18 90 $PY benchmarks/gpu_packing.py --device "$DEVICE" --model resnet18 \
    "${PACKING18[@]}"
