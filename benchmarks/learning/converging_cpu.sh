#!/usr/bin/env bash
# The converging CPU study: three conditions (25 % badly annotated patients at full budget, clean masks at full
# budget, 25 % badly annotated at 7.5 % of the budget), each a resumable `clips-nnunet study`, then their reports
# copied to docs/results/converging_cpu/<condition>/. About 2.5-3 hours on 2 CPU cores (each full condition ~1 h).
#   bash benchmarks/learning/converging_cpu.sh            # run (finished runs are skipped on a re-run)
#   bash benchmarks/learning/converging_cpu.sh --report-only
set -euo pipefail
cd "$(dirname "$0")/../.."
for condition in noisy noisy_short clean; do
    config="benchmarks/learning/converging_cpu_${condition}.yaml"
    clips-nnunet study "$config" "$@" --publish "docs/results/converging_cpu/${condition}"
done
python benchmarks/learning/summarise_conditions.py docs/results/converging_cpu --conditions noisy noisy_short clean
