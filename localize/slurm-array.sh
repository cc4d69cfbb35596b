#!/bin/bash
# Localize a corpus as a SLURM job array: each task takes its shard of the pages (by a hash of
# each page's path) and all tasks write to one output directory. Resubmitting the same array
# finishes what is missing (every shard resumes from its journal and parts). A task exits 3
# (FAILED) when more than --max-failures (0.1) of its pages failed; resubmitted, it skips them
# and fails again until EXTRA=--retry-failed (or --max-failures SHARE) is given.
#
#   mkdir -p logs && sbatch --array=0-31 localize/slurm-array.sh
#
# The array must be 0-(N-1) (shard I of N = task ID of task count), and of the same size each
# time for one OUT: a task of another count is refused there. Edit the variables below, or
# export them before sbatch (sbatch passes the environment on).
#SBATCH --job-name=layoutja-localize
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=logs/localize-%A_%a.log

SRC=${SRC:-/data/shinra/html}                                # a directory or a quoted glob
TOKENIZER=${TOKENIZER:-cl-tohoku/bert-base-japanese-v2}      # directory or hub name
OUT=${OUT:-runs/localized}                                   # shared by every task
CONFIG=${CONFIG:-localize/published.yaml}                    # the localization setting
LAYOUTJA=${LAYOUTJA:-.venv/bin/layoutja}
EXTRA=${EXTRA:-}                                             # more flags, e.g. --retry-failed

set -euo pipefail
: "${SLURM_ARRAY_TASK_ID:?run this with sbatch --array=0-N}"
: "${SLURM_ARRAY_TASK_COUNT:?run this with sbatch --array=0-N}"

# One browser per core the task was given (os.cpu_count() would see the whole node).
exec "$LAYOUTJA" localize "$SRC" --tokenizer "$TOKENIZER" --out "$OUT" \
    --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --config "$CONFIG" \
    --workers "${SLURM_CPUS_PER_TASK:-0}" $EXTRA  # unquoted: one word per flag
