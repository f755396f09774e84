#!/bin/bash
# es_lottery on ONE node with 8 GPUs: one process that sees all 8 GPUs; every search (GA, ES, NeTS,
# control) evaluates its population sharded over them (es_lottery.distributed), the search state
# replicated. No jax.distributed is needed inside one process.
#
#   sbatch scripts/slurm_one_node_8gpu.sh                                   # the config below
#   sbatch scripts/slurm_one_node_8gpu.sh imp configs/imp/kmnist_pgpe.yaml  # another experiment
#
# Install once (login node): python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[cuda,slurm]"
# The run directory is runs/ (resumable: resubmitting the same command continues where it stopped).
# Results are bit-identical for every device count (--devices 1, 2, … 8) — not to a run without
# --devices, whose numbers are the unsharded (pinned) ones.
#SBATCH --job-name=es-lottery-1node
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
mkdir -p logs
KIND=${1:-imp}
CONFIG=${2:-configs/imp/mnist_sep_cma.yaml}
. .venv/bin/activate
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several processes on a node must not each grab 75 % of a GPU
es-lottery info
srun es-lottery "$KIND" "$CONFIG" --devices all --out runs
