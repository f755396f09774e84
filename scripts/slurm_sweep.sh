#!/bin/bash
# A sweep on a SLURM cluster: run from the LOGIN node (not through sbatch). es_lottery.sweep submits one
# SLURM job per configuration through submitit, waits, and writes runs/sweeps/<name>/summary.{json,md};
# submitting the same sweep again skips the finished configurations and the ones still running.
#
#   bash scripts/slurm_sweep.sh
#
# Each job here gets one node with 8 GPUs (the population sharded over them, --devices all). Locally
# (no cluster) the same sweep runs one configuration after another: executor="local".
set -euo pipefail
. .venv/bin/activate
python - <<'PY'
from es_lottery.sweep import sweep

result = sweep(
    "configs/slt/moons.yaml",
    grid={"ga.population_size": [50, 100, 200], "variants": [["ga"], ["adaptive_ab"]]},
    executor="slurm",
    out="runs",
    devices="all",
    slurm={"partition": "gpu", "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 8, "cpus_per_task": 16,
           "timeout_min": 24 * 60},
)
print(result.markdown)
PY
