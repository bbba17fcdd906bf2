#!/bin/sh
# pretrainflow-multigpu [--set section.key=value ...]: the six stages of dvc.yaml, with
# pretraining spread over every GPU of this node (and of other nodes) by torchrun. The other
# stages run in one process. Arguments go to every stage (`pretrainflow stage NAME ARGS`).
#
# Environment (see docker/SCALE_OUT.md):
#   NPROC_PER_NODE  processes (GPUs) on this node; default: the GPUs torch sees
#   NNODES          nodes in the job (default 1); with more than one, also:
#   NODE_RANK       this node's rank, 0 .. NNODES-1; rank 0 logs to MLflow and finishes the run
#   MASTER_ADDR     address of node 0, reachable from every node; MASTER_PORT (default 29500)
# and what pretrainflow-pull-data and the stages read (DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_URI).
set -eu

nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
nproc=${NPROC_PER_NODE:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}

if [ "$node_rank" != 0 ]; then
    # Only global rank 0, on node 0, talks to MLflow; this node's validate and preprocess runs
    # (the same seeded splits as node 0's) stay in a throwaway local store.
    unset MLFLOW_TRACKING_URI
fi

pretrainflow-pull-data
pretrainflow stage validate "$@"
pretrainflow stage preprocess "$@"
pretrainflow stage start "$@"

# --no-python: `pretrainflow` is a console script on PATH, not a Python file that torchrun
# could hand to `python`.
if [ "$nnodes" = 1 ]; then
    torchrun --no-python --standalone --nproc-per-node "$nproc" pretrainflow stage pretrain "$@"
else
    : "${MASTER_ADDR:?set MASTER_ADDR to node 0's address when NNODES > 1}"
    torchrun --no-python --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$nproc" \
        --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
        pretrainflow stage pretrain "$@"
fi

if [ "$node_rank" = 0 ]; then
    pretrainflow stage finetune "$@"
    pretrainflow stage pool "$@"
    pretrainflow stage evaluate "$@"
    pretrainflow stage register "$@"
fi
