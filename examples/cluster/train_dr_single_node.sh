#!/usr/bin/env bash
# train-dr on all the GPUs of one machine (or N CPU processes) with torchrun + DDP.
#
#   NPROC=4 examples/cluster/train_dr_single_node.sh train.zarr -o runs/dr_T5 --T 5 --stride 2 \
#       --val heldout.zarr --batch-size 64 --epochs 30 --precision bf16
#
# Everything after the script name is passed to `drkit train-dr`. --batch-size is the GLOBAL
# batch: each of the NPROC processes trains on its 1/NPROC of every batch, gradients are
# averaged, so the learning rate means what it means in a one-process run with that batch.
# Only rank 0 writes RUN/ (checkpoints, metrics.jsonl, config.json) and logs. After a kill, run
# the same command with --resume (any NPROC; the same NPROC continues exactly).
# train-task works the same way: replace train-dr by train-task.
set -euo pipefail

NPROC=${NPROC:-$( (command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l) || echo 1)}
[ "$NPROC" -ge 1 ] || NPROC=1
PYTHON=${PYTHON:-python}          # the Python of the environment drkit is installed in
# CPU processes: one thread each per share of the cores (torchrun sets 1 otherwise)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}

# --standalone: a one-machine rendezvous on a free local port (no MASTER_ADDR needed).
# `-m torch.distributed.run` is torchrun; `-m drkit.cli` is the `drkit` command.
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    -m drkit.cli train-dr "$@"
