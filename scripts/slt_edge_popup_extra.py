"""Add an edge-popup baseline that the config does not list to an existing strong-ticket run directory.

A config's run directory is named by the hash of the whole config, so adding an edge-popup entry to
``configs/slt/*.yaml`` would start a new directory (and a new archive) and run every GA job again. This
script runs one more edge-popup job per architecture into the config's own run directory instead; its
rows sit next to the config's jobs, ``scripts/slt_report.py --runs runs`` archives and tabulates them.

    python scripts/slt_report.py --restore          # on a fresh machine: the archived GA rows first
    python scripts/slt_edge_popup_extra.py configs/slt/circles.yaml --archs D --kept-fraction matched_best

``--kept-fraction matched_best`` keeps the mean density of the GA variant with the higher mean test
accuracy on that architecture (Altmann et al.'s Fig. 6 rule); ``matched`` the mean over all variants;
a number in (0, 1] keeps that fraction. Matched rules need every seed of every GA variant in the run
directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from es_lottery.experiments import slt
from es_lottery.experiments.rundir import RunDir, load_yaml
from es_lottery.tasks import classification


def kept_fraction_arg(text: str) -> str | float:
    if text in slt.MATCHED:
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--kept-fraction: a number or one of {slt.MATCHED}, got {text!r}"
        ) from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--kept-fraction must be in (0, 1], got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--archs", nargs="+", required=True, help="architecture labels, e.g. D (or D@5)")
    parser.add_argument("--kept-fraction", type=kept_fraction_arg, default="matched_best")
    parser.add_argument("--weight-init", default="uniform")
    parser.add_argument("--epochs", type=int, default=None, help="default: edge-popup's (100)")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()

    exp = slt.parse_config(load_yaml(args.config))
    spec = {"weight_init": args.weight_init, "kept_fraction": args.kept_fraction}
    if args.epochs is not None:
        spec["epochs"] = args.epochs
    slt.parse_config({**load_yaml(args.config), "edge_popup": [spec]})  # the same checks as a config entry
    rundir = RunDir(args.out, exp.name, exp.resolved())
    name = slt._edge_popup_name(spec)
    settings = [(k, d, {lab: s for lab, s in a.items() if lab in args.archs}) for k, d, a in exp.settings()]
    unknown = set(args.archs) - {lab for _, _, a in settings for lab in a}
    if unknown:
        known = sorted({lab for _, _, a in exp.settings() for lab in a})
        raise SystemExit(f"--archs: {sorted(unknown)} not in {args.config} (archs: {', '.join(known)})")
    for classes, data_args, archs in settings:
        if not archs:
            continue
        data = classification.load_dataset(exp.dataset, **data_args)
        for label, sizes in archs.items():
            rows = rundir.read("results.jsonl")
            job = f"{label}/{name}"
            if {r["seed"] for r in rows if r["job"] == job} >= set(range(exp.seeds)):
                print(f"{job}: finished earlier in {rundir.path}, skipped")
                continue
            ga_jobs = [f"{label}/{v}" for v in exp.variants]
            prior = [r for r in rows if r["job"] in ga_jobs]
            kept = None
            if args.kept_fraction in slt.MATCHED:
                missing = [
                    j for j in ga_jobs if {r["seed"] for r in prior if r["job"] == j} < set(range(exp.seeds))
                ]
                if missing:
                    raise SystemExit(
                        f"{job}: needs every seed of {', '.join(missing)} in {rundir.path} first"
                    )
                kept = slt.matched_kept_fraction(args.kept_fraction, prior, ga_jobs)
            print(
                f"{job}: {exp.seeds} seeds"
                + (f", kept fraction {kept:.4f}" if kept is not None else "")
                + " …"
            )
            new = slt._edge_popup_job(exp, label, sizes, data, spec, kept)
            acc = [r["test_acc"] for r in new]
            print(
                f"{job}: test acc {np.mean(acc):.4f} mean, {np.median(acc):.4f} median, {np.std(acc):.4f} std"
            )
            extra = {} if classes is None else {"classes": classes}
            rundir.append("results.jsonl", [{**r, **extra} for r in new])
    print(f"run directory: {rundir.path}")


if __name__ == "__main__":
    main()
