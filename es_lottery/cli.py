"""The ``es-lottery`` command line.

``es-lottery info``                    devices, library versions, networks, datasets and data locations.
``es-lottery slt [CONFIG] [--seeds N] [--out DIR] [--only PATTERN] [--checkpoint-seconds S] [--seed-chunk K]``
                                      strong-ticket GA experiment (``configs/slt/*.yaml``; without CONFIG
                                      an embedded quickstart: moons, arch B, plain GA, 8 seeds), resumable:
                                      re-running skips finished jobs and seeds and resumes a GA job mid-way.
``es-lottery imp CONFIG [--seeds N] [--out DIR]``
                                      iterative pruning with ES or GD (``configs/imp/*.yaml``), resumable:
                                      re-running skips finished levels and resumes an ES level mid-way.
``es-lottery nets [CONFIG] [--seeds N] [--out DIR]``
                                      Neuroevolution Ticket Search vs IMP vs random (``configs/nets/*.yaml``).
``es-lottery migrate [PATH …] [--out DIR]``
                                      old-layout run directories and committed archives into the run store.
``es-lottery report {slt,nets,es_imp} [--runs DIR] [--out FILE] …``
                                      rebuild a committed results page (``docs/results/*.md``).
``es-lottery transfer SOURCE_RUN --to CONFIG [--criterion C] [--seeds S …] [--out DIR]``
                                      retrain a finished IMP run's tickets in another setting (data, ES, GD).
``es-lottery report RUN_DIR [RUN_DIR …] --out DIR``  Markdown + HTML page with every figure of the runs.

Every experiment writes its jobs into the run store ``<out>/store/`` (``experiments.store``: one directory per
job, keyed by the settings that change its result) and its view into ``<out>/<name>/``; re-running a config
runs only what is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys

from rich.console import Console
from rich.table import Table

PACKAGES = (
    "es_lottery",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "evosax",
    "chex",
    "gymnax",
    "brax",
    "scikit-learn",
    "tensorflow-datasets",
)


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    import jax

    from es_lottery import networks
    from es_lottery.tasks import classification

    table = Table(title="es_lottery environment")
    table.add_column("what")
    table.add_column("value")
    table.add_row("python", sys.version.split()[0])
    for name in PACKAGES:
        table.add_row(name, _version(name))
    table.add_row("jax backend", jax.default_backend())
    table.add_row("devices", ", ".join(f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()))
    console.print(table)

    tasks = Table(title="available tasks")
    tasks.add_column("dataset")
    tasks.add_column("source")
    for name in classification.DATASETS:
        if name in classification.IMAGE_DATASETS:
            try:
                ds = classification.image_dataset(name)
                sizes = f"{len(ds.x_train)}/{len(ds.x_test)}"
                src = f"{ds.info.get('source')}: {ds.info.get('path', '')} ({sizes})"
            except FileNotFoundError:
                src = "[yellow]not found locally[/] (set ES_LOTTERY_IDX_DIR or a tfds data_dir)"
        else:
            src = "generated (scikit-learn)"
        tasks.add_row(name, src)
    console.print(tasks)
    console.print(f"networks: {', '.join(networks.NETWORKS)}; initialisers: {', '.join(networks.INITS)}")
    return 0


def cmd_slt(args: argparse.Namespace, console: Console) -> int:
    from es_lottery.experiments import slt

    exp = slt.load_config(args.config, seeds=args.seeds)
    path = slt.run_experiment(
        exp,
        out=args.out,
        console=console,
        only=args.only,
        checkpoint_seconds=args.checkpoint_seconds,
        seed_chunk=args.seed_chunk,
    )
    console.print(f"run directory: {path}")
    return 0


def cmd_imp(args: argparse.Namespace, console: Console) -> int:
    from es_lottery.experiments import imp

    exp = imp.load_config(args.config, seeds=args.seeds)
    path = imp.run_experiment(exp, out=args.out, console=console)
    console.print(f"run directory: {path}")
    return 0


def cmd_nets(args: argparse.Namespace, console: Console) -> int:
    from es_lottery.experiments import nets

    exp = nets.load_config(args.config, seeds=args.seeds)
    path = nets.run_experiment(exp, out=args.out, console=console)
    console.print(f"run directory: {path}")
    return 0


def cmd_migrate(args: argparse.Namespace, console: Console) -> int:
    from es_lottery.experiments import legacy_runs

    paths = args.paths or [args.out]
    reports = legacy_runs.migrate_paths(paths, args.out, console)
    console.print(f"{len(reports)} old run(s) or archive(s) migrated into {args.out}/store")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    import importlib

    return importlib.import_module(f"es_lottery.experiments.reports.{args.page}").main(args=args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="es-lottery", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="devices, versions and available tasks")
    info.set_defaults(func=cmd_info)
    slt = sub.add_parser("slt", help="strong lottery tickets by GA (Altmann et al.)")
    slt.add_argument("config", nargs="?", default=None, help="YAML config (default: embedded quickstart)")
    slt.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the config)")
    slt.add_argument("--out", default="runs", help="output directory (default: runs/)")
    slt.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only the jobs whose name matches this glob, e.g. 'D/*', '*/backprop', 'B@5/ga' "
        "(repeatable; the others are left for a later call into the same run directory)",
    )
    slt.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="a running GA job saves its state at most every S seconds; after an interruption the same "
        "command resumes it from there (default: 60)",
    )
    slt.add_argument(
        "--seed-chunk",
        type=int,
        default=None,
        metavar="K",
        help="run a GA job's seeds K at a time and record each chunk's results when it finishes, so a long "
        "job leaves finished seeds behind (same numbers; default: all seeds at once)",
    )
    slt.set_defaults(func=cmd_slt)
    imp = sub.add_parser(
        "imp", help="ES lottery tickets: iterative pruning with ES or GD (Lange & Sprekeler)"
    )
    imp.add_argument("config", help="YAML config (configs/imp/*.yaml)")
    imp.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the config)")
    imp.add_argument("--out", default="runs", help="output directory (default: runs/)")
    imp.set_defaults(func=cmd_imp)
    nets = sub.add_parser("nets", help="Neuroevolution Ticket Search (Jackson et al.)")
    nets.add_argument(
        "config", nargs="?", default=None, help="YAML config (configs/nets/*.yaml; default: quickstart)"
    )
    nets.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the config)")
    nets.add_argument("--out", default="runs", help="output directory (default: runs/)")
    nets.set_defaults(func=cmd_nets)
    migrate = sub.add_parser(
        "migrate", help="old-layout run directories (<name>-<hash>) and committed archives into the run store"
    )
    migrate.add_argument(
        "paths",
        nargs="*",
        help="old run directories, archives (*.run.json) or folders holding them (default: every old run "
        "directory in --out)",
    )
    migrate.add_argument("--out", default="runs", help="the output directory whose store receives them")
    migrate.set_defaults(func=cmd_migrate)
    from es_lottery.experiments import analysis_cli

    analysis_cli.add_transfer(sub)
    report = sub.add_parser("report", help="rebuild a committed results page (docs/results/*.md)")
    pages = report.add_subparsers(dest="page", required=True, action=analysis_cli.PagesOrRunDirs)
    from es_lottery.experiments import reports

    for name, (what, _) in reports.PAGES.items():
        reports.add_arguments(name, pages.add_parser(name, help=what))
    analysis_cli.register_report_pages(pages)
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=150)
    try:
        return int(args.func(args, console) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
