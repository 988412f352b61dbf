#!/usr/bin/env bash
# The recipe study's quick downstream yardstick (fixed subsets, chosen once, never changed):
# lambada_openai and hellaswag items 0..999, piqa and arc_easy whole; one thread.
#   bash benchmarks/quick_eval.sh MODEL OUT_PREFIX [more radlads eval arguments, e.g. --reuse FILE]
# writes OUT_PREFIX.lambada-hellaswag.json and OUT_PREFIX.piqa-arc.json (radlads eval --json files).
set -euo pipefail
model=$1; out=$2; shift 2
radlads=${RADLADS:-radlads}
OMP_NUM_THREADS=1 $radlads eval "$model" --tasks lambada_openai,hellaswag --limit 1000 \
  --json "$out.lambada-hellaswag.json" "$@"
OMP_NUM_THREADS=1 $radlads eval "$model" --tasks piqa,arc_easy --json "$out.piqa-arc.json" "$@"
