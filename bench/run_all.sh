#!/usr/bin/env bash
# Run every benchmark in sequence (engine in the active environment, the reference in
# bench/.refenv, built on first use). Output is printed and kept in bench/out/*.log.
# Usage: bash bench/run_all.sh          (about 30-60 minutes on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
bash bench/reference_env.sh
for bench in condense_vs_phate volume_mni quality_mni encoder_bf16 landmarks landmark_importance landmark_registration adapt_cuts gui_steps train_processes train_memory texture_cuts persistent_rules texture_figure web_slider; do
    echo "=== bench/$bench.py"
    start=$(date +%s)
    python "bench/$bench.py" 2>&1 | tee "bench/out/$bench.log"
    echo "=== bench/$bench.py took $(( $(date +%s) - start )) s"
done
