#!/bin/bash
# es_lottery on SEVERAL nodes (here 4 × 8 GPUs): one process per GPU (SLURM task), joined by
# jax.distributed (--distributed: jax.distributed.initialize() detects SLURM and gives each process the
# GPU of its SLURM_LOCALID). The mesh spans all 32 GPUs; every search's population is sharded over them,
# the search state replicated; only process 0 writes the run directory and the logs.
#
#   sbatch scripts/slurm_multi_node.sh                                      # the config below
#   sbatch --nodes=2 scripts/slurm_multi_node.sh slt configs/slt/moons.yaml
#
# runs/ must be on a filesystem every node sees (all processes read the finished work to skip it; only
# process 0 writes). Each member block is a fixed size, so the numbers do not depend on the node count;
# with 32 devices raise the block count so every GPU gets work: ES_LOTTERY_BLOCKS=32 (≥ devices).
# Other launchers (no SLURM): every process runs
#   es-lottery KIND CONFIG --distributed HOST:PORT,NUM_PROCESSES,PROCESS_ID --devices all
#SBATCH --job-name=es-lottery-nodes
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
mkdir -p logs
KIND=${1:-imp}
CONFIG=${2:-configs/imp/mnist_sep_cma.yaml}
. .venv/bin/activate
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export ES_LOTTERY_BLOCKS=${ES_LOTTERY_BLOCKS:-32}
srun es-lottery "$KIND" "$CONFIG" --distributed --devices all --out runs
