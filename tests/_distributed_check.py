"""One process of a localhost ``jax.distributed`` ES run, for ``tests/test_distributed.py``.

``python tests/_distributed_check.py OUT PROCESS_ID NUM_PROCESSES PORT`` (``NUM_PROCESSES`` = 0: no
``jax.distributed`` at all, a plain single process on every local device). Every process initialises
``jax.distributed`` (coordinator ``localhost:PORT``), builds a small SNES task inside
``distributed.use_devices("all")`` — the mesh spans the devices of all processes — feeds its data and θ₀
as global arrays (``distributed.replicate``: ``jax.make_array_from_process_local_data``), trains, and
writes its result with :func:`save` into ``distributed.process_output_dir(OUT, "run")``: process 0 into
``OUT/run``, every other process into a private scratch copy. It prints one JSON line (process index and
count, devices, digest of the result, where it wrote).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from es_lottery import distributed


def digest(tree) -> str:
    import numpy as np

    h = hashlib.sha256()
    for leaf in __import__("jax").tree_util.tree_leaves(distributed.to_host(tree)):
        a = np.ascontiguousarray(leaf)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


def save(run_dir: Path, result: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(result))
    with (run_dir / "log.txt").open("a") as fh:
        fh.write(f"written by process {result['process_index']}\n")


def main(out: str, process_id: int, num_processes: int, port: int) -> None:
    if num_processes:
        distributed.initialize(f"localhost:{port}", num_processes, process_id)
    target = distributed.process_output_dir(out, "run") / "run"  # before anything is written
    import jax

    from es_lottery import masks as masks_lib
    from es_lottery import networks
    from es_lottery.search import es
    from es_lottery.tasks import classification

    data = classification.load_dataset("digits")
    module = networks.make_network("mlp", sizes=[64, 8, 10])
    cfg = es.ESConfig(algorithm="SNES", population_size=6, sigma_init=0.1)
    with distributed.use_devices("all") as sharding:
        task = es.make_classification_task(
            module, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=128
        )
    theta0 = networks.init_params(jax.random.key(1), module)
    task, theta0 = distributed.replicate((task, theta0), sharding)
    state, hist = es.run(jax.random.key(2), theta0, masks_lib.ones(theta0), task, cfg, 3, 3)
    result = {
        "process_index": distributed.process_index(),
        "process_count": distributed.process_count(),
        "devices": jax.device_count(),
        "digest": digest((state.es_state, hist)),
        "test_accuracy": float(distributed.to_host(hist["eval"]["accuracy"])[-1]),
    }
    save(target, result)
    distributed.barrier("saved")
    print(json.dumps({**result, "wrote": str(target)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
