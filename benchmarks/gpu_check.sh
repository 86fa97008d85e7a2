#!/usr/bin/env bash
# The GPU checks in one go (about 5 minutes on one H100 or H200), with avvp-lightning installed:
#   1. the tests that need a CUDA device (CUDA-graph steps against eager steps, a graphed fit);
#   2. a full 40-epoch fit at LLP's size (10,000 train / 649 val / 1,200 test synthetic videos,
#      real feature sizes) with the paper's model and settings (CUDA graphs included), the packed
#      store held on the GPU, timed from the command's start to its end, then its test;
#   3. benchmarks/train_throughput.py on 10,000 videos with case F-eager (no CUDA graphs).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (DATA=where the ~9 GB of generated data go, in
# a folder avvp_gpu_check of their own, removed after use, also after a failure or Ctrl-C;
# TRAIN, VAL, TEST and DEVICE=cpu make a small smoke run of the same steps (VAL sizes the
# 40-epoch fit's validation set; the benchmark validates its fits on 100 videos); EAGER=1 adds
# the 40-epoch fit without CUDA graphs, --model.cuda_graphs=false; BENCH=0 skips the benchmark).
# The avvp-* commands come from PATH, else from the repository's .venv (made by .ci/setup.sh).
# Exit status: 0 when every step succeeded, else 1, after all steps ran (the failed ones are named).
set -u -o pipefail
OUT=${1:-gpu_check}
DATA=${DATA:-/tmp}/avvp_gpu_check
TRAIN=${TRAIN:-10000} VAL=${VAL:-649} TEST=${TEST:-1200} DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$(dirname "$DATA")" || exit 1
OUT=$(CDPATH='' cd -- "$OUT" && pwd) DATA=$(CDPATH='' cd -- "$(dirname "$DATA")" && pwd)/avvp_gpu_check  # from here
export WANDB_MODE=${WANDB_MODE:-disabled} PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
if ! command -v avvp-finetune > /dev/null && [ -x .venv/bin/avvp-finetune ]; then
    export PATH="$PWD/.venv/bin:$PATH"
fi
bin=""
if ! command -v avvp-finetune > /dev/null && (cd / && python3 -c "import avvp_lightning.finetune.cli") 2> /dev/null; then
    # installed without its console scripts (pip install --target, say): run the modules instead,
    # with the working directory off sys.path, so that this repository's folder avvp_lightning
    # does not shadow the installed package (whose stages are mapped into it)
    bin=$(mktemp -d)
    trap 'rm -rf "$bin"' EXIT
    for cmd in finetune:avvp_lightning.finetune.cli data:avvp_lightning.data.cli; do
        printf '#!/bin/sh\nexec python3 -c "import runpy, sys; sys.path[:] = [p for p in sys.path if p]; sys.argv[0] = \\"avvp-%s\\"; runpy.run_module(\\"%s\\", run_name=\\"__main__\\")" "$@"\n' \
            "${cmd%%:*}" "${cmd#*:}" > "$bin/avvp-${cmd%%:*}"
        chmod +x "$bin/avvp-${cmd%%:*}"
    done
    export PATH="$bin:$PATH"
fi
command -v avvp-finetune > /dev/null || { echo "avvp-finetune not found: activate the environment where avvp-lightning is installed" >&2; exit 1; }
seconds() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
failed=()
check() {  # STATUS WHAT: remember a failed step
    if [ "$1" != 0 ]; then failed+=("$2 (exit $1)"); echo "FAILED: $2 (exit $1)" | tee -a "$OUT/failed.txt" >&2; fi
}
step=""
timed() {  # SECONDS COMMAND...: COMMAND under `timeout`, in the background, so that a signal to this
    timeout "$@" &  # script is handled at once (timeout runs COMMAND in a process group of its own)
    step=$!
    wait "$step"
    local status=$?
    step=""
    return $status
}
stop() {  # STATUS: stop the running step, then exit (the EXIT trap removes the data)
    trap - INT TERM
    if [ -n "$step" ]; then
        kill -TERM -- "-$step" 2> /dev/null || kill -TERM "$step" 2> /dev/null
        wait "$step" 2> /dev/null
    fi
    exit "$1"
}
rm -f "$OUT/failed.txt"
trap 'rm -rf "$DATA" ${bin:+"$bin"}' EXIT
trap 'stop 130' INT
trap 'stop 143' TERM

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, '| lightning', pl.__version__)" \
    | tee -a "$OUT/device.txt"

echo "== 1. CUDA tests"
# PYTHONSAFEPATH: import the installed package, not the repository's folder of the same name
PYTHONSAFEPATH=1 timed 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py > "$OUT/tests.log" 2>&1
check $? "CUDA tests ($OUT/tests.log)"
tail -n 15 "$OUT/tests.log" | tee "$OUT/tests.txt"

echo "== 2. 40 epochs at LLP's size ($TRAIN train videos)"
rm -rf "$DATA"
start=$(date +%s%N)
timed 900 avvp-data generate "$DATA/llp" --train "$TRAIN" --val "$VAL" --test "$TEST" && timed 600 avvp-data pack "$DATA/llp"
status=$?
check $status "generate and pack"
echo "data generated and packed in $(seconds "$start") s (exit $status)" | tee "$OUT/llp40.txt"
fit=(--data.root "$DATA/llp" --data.store packed --data.device_resident=true --trainer.enable_progress_bar=false
     --trainer.accelerator "$DEVICE" --run.output_dir "$DATA/runs")
curve='
import sys
from pathlib import Path
import pandas as pd
run = Path(sys.argv[1])
rows = pd.concat(pd.read_csv(f) for f in sorted(run.glob("csv/version_*/metrics.csv")))
val = rows["val/segment/type"].dropna()
print(f"val segment Type@AV by epoch ({len(val)}):", " ".join(f"{v:.3f}" for v in val))
'
run40() {  # NAME [ARGS...]: a timed 40-epoch fit, its validation curve, its test
    local name=$1 start status
    shift
    start=$(date +%s%N)
    timed 400 avvp-finetune fit "${fit[@]}" --run.name "$name" "$@" > "$OUT/$name.log" 2>&1
    status=$?
    check $status "$name fit ($OUT/$name.log)"
    echo "$name: avvp-finetune fit, 40 epochs $*: exit $status, $(seconds "$start") s wall" | tee -a "$OUT/llp40.txt"
    grep -E "cuda_graphs|Error|UserWarning" "$OUT/$name.log" | tail -n 5 | tee -a "$OUT/llp40.txt"
    python3 -c "$curve" "$DATA/runs/$name/seed0" 2>&1 | tee -a "$OUT/llp40.txt"
    check $? "$name validation curve"
    timed 120 avvp-finetune test "${fit[@]}" --run.name "$name" --ckpt_path best > "$OUT/$name-test.log" 2>&1
    check $? "$name test ($OUT/$name-test.log)"
    grep -A3 "Type@AV" "$OUT/$name-test.log" | tee -a "$OUT/llp40.txt"
}
run40 llp40
[ "${EAGER:-0}" = 1 ] && run40 llp40-eager --model.cuda_graphs=false  # for comparison
rm -rf "$DATA"

if [ "${BENCH:-1}" = 1 ]; then
    echo "== 3. throughput benchmark"
    timed 420 python3 benchmarks/train_throughput.py --device "$DEVICE" --videos "$TRAIN" --test-videos "$TEST" \
        --epochs 1 --eager-fit --data "$DATA" > "$OUT/bench.log" 2>&1
    check $? "throughput benchmark ($OUT/bench.log)"
    grep -v -E "Warning|warn\(|^\s*$" "$OUT/bench.log" | tee "$OUT/bench.txt"
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: ${#failed[@]} step(s) failed:" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "gpu_check: every step succeeded"
