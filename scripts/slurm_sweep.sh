#!/bin/bash
# A sweep on a SLURM cluster: run from the LOGIN node (not through sbatch). `es-lottery sweep` submits one
# SLURM job per configuration through submitit, waits, and writes runs/sweeps/<name>/summary.{json,md};
# submitting the same sweep again skips the finished configurations and the ones still running, and
# collects the summary.
#
#   bash scripts/slurm_sweep.sh                 # the grid below: 3 population sizes × 2 variants = 6 jobs
#   bash scripts/slurm_sweep.sh --no-wait       # submit and return; run it again later to collect
#
# Each job here gets one node with 8 GPUs (the population sharded over them, --devices all; the devices
# are not part of any job key). Without a cluster the same command with --executor local runs the
# configurations as local subprocesses, one after another (--max-parallel K: K at once).
# Install once: python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[cuda,slurm]"
set -euo pipefail
. .venv/bin/activate
es-lottery sweep configs/slt/moons.yaml \
  --grid ga.population_size=50,100,200 \
  --grid 'variants=[ga],[adaptive_ab]' \
  --executor slurm --devices all --out runs \
  --slurm partition=gpu --slurm nodes=1 --slurm tasks_per_node=1 --slurm gpus_per_node=8 \
  --slurm cpus_per_task=16 --slurm timeout_min=1440 \
  "$@"
