#!/usr/bin/env bash
# DeSD on one CUDA GPU, the figures docs/performance.md could not measure on the CPU:
#   1. the CUDA tests of the step (float16 autocast with a GradScaler against float32);
#   2. step time and peak memory, DeSD against the bare encoder work, float16 autocast and
#      GradScaler as the trainer uses them on CUDA, tiny and paper configurations, eager and with
#      the encoders compiled (bench/desd_step.py --device cuda);
#   3. peak GPU memory of the paper set-up at the paper's batch: 64 samples (128 views) of
#      16 x 112 x 112, K = 65536;
#   4. two epochs of DeSD pretraining through stock nnUNetv2_train on phantoms (written and planned
#      as tests/conftest.py does), with nnU-Net's own torch.compile default.
# About 6-7 minutes on one GPU. Each command has a time limit; the script goes on after a failure
# and lists the failures at the end (exit status 1 if any).
#
# Usage:
#   bench/gpu_check.sh                 on a machine with one CUDA GPU
#   DEVICE=cpu bench/gpu_check.sh      dry run of the same commands with tiny sizes on the CPU
# Environment: PYTHON (default python), OUT (folder for gpu_check.log; default: the current folder).
set -u -o pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG_DIR=${OUT:-.}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/gpu_check.log"
: > "$LOG"
FAILED=""

if [ "$DEVICE" = cuda ]; then
    PAPER=paper; BIG_BATCH=64; STEPS=(--steps 20 --warmup 3); PAPER_STEPS=(--steps 10 --warmup 3)
    BIG_STEPS=(--steps 3 --warmup 2); EPOCH_ITERS=20; LIMIT=240
else  # dry run: every command, tiny sizes
    PAPER=tiny; BIG_BATCH=2; STEPS=(--steps 1 --warmup 1); PAPER_STEPS=(--steps 1 --warmup 1)
    BIG_STEPS=(--steps 1 --warmup 1); EPOCH_ITERS=2; LIMIT=900
fi
BENCH=("$PY" bench/desd_step.py --device "$DEVICE" --workloads bare,desd)

run() {  # run NAME SECONDS COMMAND...: log the command, its output, exit status and time
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || FAILED="$FAILED $name"
}

{
    date -u
    uptime
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    git log -1 --format='commit %H %s' 2> /dev/null
} 2>&1 | tee -a "$LOG"

if [ "$DEVICE" = cuda ]; then
    run cuda-tests 120 "$PY" -m pytest -q tests/test_desd_step.py -k cuda -rs
fi
run tiny-amp "$LIMIT" "${BENCH[@]}" --config tiny "${STEPS[@]}"
run paper-amp "$LIMIT" "${BENCH[@]}" --config "$PAPER" "${PAPER_STEPS[@]}"
run paper-batch64-memory "$LIMIT" "${BENCH[@]}" --config "$PAPER" --batch "$BIG_BATCH" "${BIG_STEPS[@]}"
# compiled: time only (every peak-memory process would compile again)
run tiny-amp-compiled "$LIMIT" "${BENCH[@]}" --config tiny --compile --no-memory "${STEPS[@]}"
run paper-amp-compiled "$LIMIT" "${BENCH[@]}" --config "$PAPER" --compile --no-memory "${PAPER_STEPS[@]}"

# two epochs through stock nnUNetv2_train on a planned phantom dataset
ROOT=$(mktemp -d)
export nnUNet_raw="$ROOT/raw" nnUNet_preprocessed="$ROOT/preprocessed" nnUNet_results="$ROOT/results"
export nnUNet_extTrainer="$PWD/trainers" nnUNet_n_proc_DA=2 nnUNet_def_n_proc=2
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
run plan-phantoms 300 "$PY" -c "
from nnunet_ssl.phantom import write_phantom_dataset
from nnunet_ssl.planning import plan_and_preprocess
write_phantom_dataset('$nnUNet_raw', 501, 'Tiny', n_train=6, n_test=0, shape=(32, 40, 40))
plan_and_preprocess(501, base_features=4, gpu_memory_gb=0.5, num_processes=2, ssl_settings={
    'num_epochs': 2, 'num_iterations_per_epoch': $EPOCH_ITERS, 'num_val_iterations_per_epoch': 2,
    'batch_size': 2, 'view_size': [16, 32, 32], 'out_dim': 4096, 'hidden_dim': 256,
    'bottleneck_dim': 64, 'warmup_epochs': 1, 'warmup_teacher_temp_epochs': 1})
"
run train-2-epochs "$LIMIT" nnUNetv2_train 501 3d_fullres all -tr nnUNetTrainerDeSD -device "$DEVICE"
FOLD="$nnUNet_results/Dataset501_Tiny/nnUNetTrainerDeSD__nnUNetPlans__3d_fullres/fold_all"
{
    grep -h -E "torch.compile|Epoch time|train_loss|RankMe" "$FOLD"/training_log_*.txt
    ls -l "$FOLD/checkpoint_final.pth"
} 2>&1 | tee -a "$LOG"
[ -f "$FOLD/checkpoint_final.pth" ] || FAILED="$FAILED train-checkpoint"
rm -rf "$ROOT"

if [ -n "$FAILED" ]; then
    echo "FAILED:$FAILED" | tee -a "$LOG"
    exit 1
fi
echo "all checks ran; log: $LOG" | tee -a "$LOG"
