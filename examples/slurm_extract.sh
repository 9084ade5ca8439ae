#!/usr/bin/env bash
# Extract teacher embeddings for a large packed corpus with a SLURM job array.
# Each array task owns the tar shards with shard % SLURM_ARRAY_TASK_COUNT == its index, writes only
# whole zarr chunks of its own shards, and can be killed and resubmitted: finished shards are skipped.
# Usage: sbatch --array=0-31 examples/slurm_extract.sh /scratch/audioset-work /models/matpac_plus_6s_2048_enconly.pt
#SBATCH --job-name=ssondo-extract
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --output=logs/extract-%A_%a.out
set -euo pipefail
WORK=${1:?usage: sbatch --array=0-N $0 WORK CHECKPOINT}
CHECKPOINT=${2:?checkpoint path}
# SLURM_ARRAY_TASK_ID / _COUNT / _MIN are read by ssondo itself (pipeline/ranks.py).
ssondo extract "$WORK" --teacher matpac --checkpoint "$CHECKPOINT" --ts 6 --device cuda \
    --batch-size 256 --compile --workers 1
# When every array task has finished, `ssondo cache info WORK` shows rows done / total.
