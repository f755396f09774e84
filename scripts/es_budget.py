"""Does the ES budget explain where a CPU-sized ES-IMP curve falls short of the paper's?

The CPU variants train every level with a fraction of the paper's ES budget (Pendulum: population 64 × 600
generations against 256 × 3000; MNIST: 64 × 400 against 128 × 4000). This script retrains chosen levels of
a finished run — exactly their stored mask and the level's start θ₀ ⊙ m, with the level's own training key
— at other budgets, and appends one JSON row per (seed, level, budget) to
``docs/results/<page>/data/<config name>.budget.jsonl`` (page ``es_imp_control`` for control configs,
``es_imp`` for classification; finished rows are skipped, so it resumes). ``es-lottery report <page>``
shows the rows beside the curve. The config's own budget must reproduce the stored score to the bit.

    python scripts/es_budget.py configs/imp/pendulum_sep_cma_cpu.yaml --runs runs \\
        --levels 9 12 --budgets 64x600 64x2400 256x600
    python scripts/es_budget.py configs/imp/mnist_sep_cma_cpu.yaml --runs runs \\
        --levels 0 19 --budgets 64x400 64x1600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

from es_lottery.experiments import imp
from es_lottery.pruning import loop
from es_lottery.treeio import load_tree


def parse_budget(text: str) -> tuple[int, int]:
    try:
        pop, gens = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--budgets: {text!r} is not POPULATIONxGENERATIONS (e.g. 64x2400)") from None
    return pop, gens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--criterion", default="magnitude")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--levels", type=int, nargs="+", required=True)
    p.add_argument("--budgets", nargs="+", default=["64x600", "64x2400"])
    p.add_argument("--data", type=Path, default=None, help="default: docs/results/<page>/data")
    args = p.parse_args(argv)

    exp = imp.load_config(args.config)
    if exp.trainer_type != "es":
        raise SystemExit(f"{args.config}: an ES config is needed (trainer.type: es)")
    control = exp.env is not None
    score = "return" if control else "accuracy"
    data_dir = args.data or Path(f"docs/results/{'es_imp_control' if control else 'es_imp'}/data")
    root = imp.data_dir(exp, args.runs)
    out = data_dir / f"{exp.name}.budget.jsonl"
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["criterion"], r["seed"], r["level"], r["population_size"], r["num_generations"]))
    if control:
        task = exp.control_task()
        make = lambda cfg: exp.trainer_kind.control(task, cfg)  # noqa: E731
    else:
        data, module = imp.load_data(exp), exp.module()
        make = lambda cfg: exp.trainer_kind.classification(module, data, cfg)  # noqa: E731
    base = exp.trainer
    for seed in args.seeds:
        run_key = jax.random.fold_in(jax.random.key(exp.seed), seed)
        for level in args.levels:
            ldir = root / f"seed_{seed}" / imp.branch_dirs(exp)[args.criterion] / f"level_{level}"
            if not (ldir / "metrics.json").is_file():
                print(f"{ldir}: level not finished in the store, skipped", file=sys.stderr)
                continue
            stored = json.loads((ldir / "metrics.json").read_text())
            for budget in args.budgets:
                pop, gens = parse_budget(budget)
                if (args.criterion, seed, level, pop, gens) in done:
                    continue
                es_cfg = dataclasses.replace(base.es, population_size=pop)
                cfg = dataclasses.replace(base, es=es_cfg, num_generations=gens)
                trainer = make(cfg)
                like = trainer.init_params(jax.random.key(0))
                start = load_tree(ldir / "theta0.npz", like)[0]
                mask = imp.load_mask(ldir / "mask.npz", like)
                k_train, _ = loop.level_keys(run_key, level)
                t0 = time.time()
                result = trainer.train(k_train, start, mask)
                row = {
                    "criterion": args.criterion,
                    "seed": seed,
                    "level": level,
                    "density": stored.get("density"),
                    "population_size": pop,
                    "num_generations": gens,
                    f"test_{score}": float(result.eval_score),
                    f"stored_test_{score}": stored.get(f"test_{score}"),
                    "seconds": time.time() - t0,
                }
                print(json.dumps(row), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(row, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
