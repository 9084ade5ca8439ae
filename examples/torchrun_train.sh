#!/usr/bin/env bash
# Train a student with DDP on one node with 8 GPUs (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK).
# Multi-node: add --nnodes N --node_rank R --rdzv_endpoint HOST:PORT on every node.
# Usage: examples/torchrun_train.sh /scratch/audioset-work matpac-<id>/ts6-hop6 runs/mn10-matpac
set -euo pipefail
WORK=${1:?usage: $0 WORK CACHE RUN}
CACHE=${2:?cache name, see: ssondo cache info WORK}
RUN=${3:?run folder}
torchrun --standalone --nproc_per_node 8 -m pipeline.cli train "$WORK" --cache "$CACHE" \
    --student mobilenetv3 --manifest "$WORK/manifests/balanced-k50.parquet" --loss cosine \
    --config configs/mobilenetv3-matpac.yaml --out "$RUN" --resume
