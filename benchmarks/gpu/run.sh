#!/bin/bash
# GPU benchmark in one go, sized for ONE 10-minute slot on one H100/H200 (16 CPU cores). Not a test.
#
#   bash benchmarks/gpu/run.sh [WORKDIR] [OUT_JSON]        # defaults: ./gpu_bench_work, WORKDIR/gpu_bench.json
#   BUDGET_S=570 bash benchmarks/gpu/run.sh ...             # total seconds (default 570, leaves 30 s to copy)
#
# Writes every number to ONE JSON (sections prepare, trainers, augmentation, tmtv_stage1, study, timing):
#   1. synthetic 2-channel data (16 cases of 160^3 at 2 mm), nnU-Net's default 3d_fullres plan (128^3, batch 2);
#   2. iterations/s of nnUNetTrainerCLSelfPaced vs stock nnUNetTrainer, full steps with nnU-Net's default
#      augmentation workers, AMP, ratio CL / stock (stock, CL, CL, stock);
#   3. augmentation throughput: batches/s of the training pipeline with 12 workers;
#   4. TMTV-Net stage 1 (clips-nnunet plan-tmtv, 3d_tmtv): median train_step time on a pre-fetched batch;
#   5. the study benchmarks/learning/gpu_lease.yaml for the remaining minutes (resumable: run again to continue),
#      then its report from the runs that finished.
# Each step has its own time limit so that a slow step cannot eat the study's minutes; a step that fails or runs
# out of time is recorded in the JSON ("timing") and the script goes on.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=$(mkdir -p "${1:-gpu_bench_work}" && cd "${1:-gpu_bench_work}" && pwd)
OUT=${2:-$WORK/gpu_bench.json}
BUDGET_S=${BUDGET_S:-570}
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python
BIN=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
START=$(date +%s)
export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
export nnUNet_compile=false
export nnUNet_extTrainer=$("$BIN/clips-nnunet" env | sed -n 's/^export nnUNet_extTrainer=//p')
TIMING=()

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME LIMIT_S COMMAND...: run with a time limit (never past the budget), record seconds and exit code
step() {
    local name=$1 limit=$2; shift 2
    local rest; rest=$(left)
    (( limit > rest )) && limit=$rest
    if (( limit < 10 )); then
        echo "[run.sh] $name skipped: $rest s left"; TIMING+=("\"$name\": {\"skipped\": true}"); return
    fi
    local t0; t0=$(date +%s)
    echo "[run.sh] $name (at most $limit s)"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    TIMING+=("\"$name\": {\"seconds\": $(( $(date +%s) - t0 )), \"exit_code\": $rc, \"limit_s\": $limit}")
    return 0
}

BENCH=("$PY" "$HERE/gpu_bench.py" --workdir "$WORK" --json "$OUT")
step prepare 150 "${BENCH[@]}" prepare
step trainers 200 "${BENCH[@]}" trainers --iterations 30 --rounds 2
step augmentation 45 "${BENCH[@]}" augmentation --workers 12 --batches 60
step tmtv_plan 60 bash -c "'$BIN/clips-nnunet' plan-tmtv -d 996 >/dev/null && '$BIN/nnUNetv2_preprocess' -d 996 -c 3d_tmtv -np 8 >/dev/null"
step tmtv 75 "${BENCH[@]}" tmtv --iterations 20 --workers 12

# the study for what is left, keeping 45 s for its report
STUDY_DIR=$WORK/study_gpu_lease
STUDY_LIMIT=$(( $(left) - 45 ))
STUDY_RC=124
if (( STUDY_LIMIT >= 60 )); then
    t0=$(date +%s)
    timeout --kill-after=10 "$STUDY_LIMIT" "$BIN/clips-nnunet" study "$REPO/benchmarks/learning/gpu_lease.yaml" \
        --study-dir "$STUDY_DIR"
    STUDY_RC=$?
    TIMING+=("\"study\": {\"seconds\": $(( $(date +%s) - t0 )), \"exit_code\": $STUDY_RC, \"limit_s\": $STUDY_LIMIT}")
    [ "$STUDY_RC" -eq 124 ] && step study_report 40 "$BIN/clips-nnunet" study \
        "$REPO/benchmarks/learning/gpu_lease.yaml" --study-dir "$STUDY_DIR" --report-only
else
    TIMING+=("\"study\": {\"skipped\": true}")
fi
"$PY" "$HERE/gpu_bench.py" study-summary --workdir "$WORK" --json "$OUT" --study-dir "$STUDY_DIR" \
    --exit-code "$STUDY_RC" || true

# timing section: every step's seconds and exit code, the total
JOINED=$(IFS=,; echo "${TIMING[*]}")
"$PY" - "$OUT" "{${JOINED}, \"total_s\": $(( $(date +%s) - START ))}" <<'EOF'
import json, sys
from pathlib import Path
path, timing = Path(sys.argv[1]), json.loads(sys.argv[2])
data = json.loads(path.read_text()) if path.is_file() else {}
data["timing"] = timing
path.write_text(json.dumps(data, indent=2))
print(f"[run.sh] numbers in {path}")
EOF
