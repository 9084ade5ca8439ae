#!/usr/bin/env bash
# Train a student with DDP on one node with 8 GPUs (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK).
# Multi-node: add --nnodes N --node_rank R --rdzv_endpoint HOST:PORT on every node.
# Preemption (SIGTERM) checkpoints the current step and exits 143; the same command resumes it.
# Usage: examples/torchrun_train.sh /scratch/audioset-work matpac-<id>/ts6-hop6 runs/mn10-matpac
# Other settings through the environment (defaults: the paper's MobileNetV3 from MATPAC++):
#   NPROC=8 (processes on this node), CONFIG=configs/mn10-matpac.yaml,
#   MANIFEST=WORK/manifests/balanced-k50.parquet (or random), TORCHRUN=torchrun.
set -euo pipefail
WORK=${1:?usage: $0 WORK CACHE RUN}
CACHE=${2:?cache name, see: ssondo cache info WORK}
RUN=${3:?run folder}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "${TORCHRUN:-torchrun}" --standalone --nproc_per_node "${NPROC:-8}" -m pipeline.cli train "$WORK" \
    --cache "$CACHE" --manifest "${MANIFEST:-$WORK/manifests/balanced-k50.parquet}" \
    --config "${CONFIG:-$REPO/configs/mn10-matpac.yaml}" --out "$RUN" --resume
