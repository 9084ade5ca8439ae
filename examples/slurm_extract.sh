#!/usr/bin/env bash
# Extract teacher embeddings for a large packed corpus with a SLURM job array.
# Each array task owns the tar shards with shard % SLURM_ARRAY_TASK_COUNT == its index, writes only
# whole zarr chunks of its own shards, and can be killed and resubmitted: finished shards are skipped.
# Preemption (SIGTERM, or --signal=USR1@120) stops it at a resumable point with exit status 143 / 138.
# Usage: sbatch --array=0-31 examples/slurm_extract.sh /scratch/audioset-work /models/matpac_plus_6s_2048_enconly.pt
# Other settings through the environment (defaults: the paper's MATPAC++ run on one GPU per task):
#   TEACHER=matpac TS=6 DEVICE=cuda BATCH_SIZE=256 WORKERS=1 COMPILE=--compile (COMPILE= runs eagerly)
#   TEACHER_OPTIONS="KEY=VALUE ..." (each becomes -o KEY=VALUE), SSONDO=ssondo (the command to run).
#   A teacher without weights (e.g. yamnet) takes an empty CHECKPOINT argument: ... WORK ""
#SBATCH --job-name=ssondo-extract
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --output=logs/extract-%A_%a.out
set -euo pipefail
WORK=${1:?usage: sbatch --array=0-N $0 WORK CHECKPOINT}
CHECKPOINT=${2?checkpoint path (an empty argument for a teacher without one)}
args=(--teacher "${TEACHER:-matpac}" --ts "${TS:-6}" --device "${DEVICE:-cuda}"
      --batch-size "${BATCH_SIZE:-256}" --workers "${WORKERS:-1}")
if [ -n "$CHECKPOINT" ]; then args+=(--checkpoint "$CHECKPOINT"); fi
COMPILE=${COMPILE---compile}
if [ -n "$COMPILE" ]; then args+=("$COMPILE"); fi
for kv in ${TEACHER_OPTIONS:-}; do args+=(-o "$kv"); done
# SLURM_ARRAY_TASK_ID / _COUNT / _MIN are read by ssondo itself (pipeline/ranks.py).
exec "${SSONDO:-ssondo}" extract "$WORK" "${args[@]}"
# When every array task has finished, `ssondo cache info WORK` shows rows done / total.
