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
``es-lottery sweep CONFIG --grid KEY=V1,V2 … [--executor {local,slurm}] [--slurm KEY=VALUE …]``
                                      one job per grid point through submitit, one summary; finished jobs
                                      are skipped when submitted again (``es_lottery.sweep``).
``es-lottery migrate [PATH …] [--out DIR]``
                                      old-layout run directories and committed archives into the run store.
``es-lottery report {slt,nets,es_imp,es_imp_control,analysis} [--runs DIR] [--out FILE] …``
                                      rebuild a committed results page (``docs/results/*.md``).
``es-lottery transfer SOURCE_RUN --to CONFIG [--criterion C] [--seeds S …] [--out DIR]``
                                      retrain a finished IMP run's tickets in another setting (data, ES, GD).
``es-lottery report RUN_DIR [RUN_DIR …] --out DIR``  Markdown + HTML page with every figure of the runs.

Every experiment writes its jobs into the run store ``<out>/store/`` (``experiments.store``: one directory per
job, keyed by the settings that change its result) and its view into ``<out>/<name>/``; re-running a config
runs only what is missing. ``slt``, ``imp`` and ``nets`` take ``--devices N|all`` (populations over N
devices, the same numbers for every N; ``--devices 2`` uses both cores of a 2-core CPU) and
``--distributed [HOST:PORT,NUM_PROCESSES,PROCESS_ID]`` (``jax.distributed``; only process 0 writes).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import sys
from collections.abc import Callable

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


def _placement(args: argparse.Namespace, console: Console):
    """``--devices`` / ``--distributed`` (``distributed.command_session``): yields ``(out, console)`` for
    this process — on every process but process 0 of a ``--distributed`` run a scratch copy and a silent
    console, so only process 0 writes. Neither flag is part of any config or job key."""
    from es_lottery import distributed

    return distributed.command_session(args.devices, args.distributed, args.out, console)


def _add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices",
        default=None,
        metavar="N|all",
        help="evaluate populations over N devices ('all': every device) in fixed member blocks: the same "
        "numbers for every N. On a CPU, N host devices (one core each): --devices 2 uses both cores of a "
        "2-core machine. Not part of any config or job key",
    )
    parser.add_argument(
        "--distributed",
        nargs="?",
        const=True,
        default=None,
        metavar="HOST:PORT,NUM_PROCESSES,PROCESS_ID",
        help="several processes / hosts through jax.distributed.initialize(): without a value the cluster is "
        "detected (SLURM srun, Open MPI, …), otherwise the coordinator of process 0, the number of processes "
        "and this process's id. Every process runs the command; only process 0 writes",
    )


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from es_lottery import distributed
    from es_lottery import sweep as sweep_lib

    result = sweep_lib.sweep(
        args.config,
        sweep_lib.parse_grid(args.grid or []),
        kind=args.kind,
        executor=args.executor,
        out=args.out,
        name=args.name,
        seeds=args.seeds,
        devices=distributed.parse_devices(args.devices),
        slurm=sweep_lib.parse_options(args.slurm or []),
        max_parallel=args.max_parallel,
        wait=not args.no_wait,
    )
    console.print(result.markdown)
    console.print(f"summary: {result.directory / 'summary.md'}")
    failed = [j.name for j in result.jobs if j.status == "failed"]
    if failed:
        console.print(
            f"[bold red]failed jobs:[/] {', '.join(failed)} (logs: {result.directory / 'submitit'})"
        )
    return 1 if failed else 0


def cmd_slt(args: argparse.Namespace, console: Console) -> int:
    with _placement(args, console) as (out, console):  # before JAX starts (evosax's import starts it)
        from es_lottery.experiments import slt

        exp = slt.load_config(args.config, seeds=args.seeds)
        path = slt.run_experiment(
            exp,
            out=out,
            console=console,
            only=args.only,
            checkpoint_seconds=args.checkpoint_seconds,
            seed_chunk=args.seed_chunk,
        )
        console.print(f"run directory: {path}")
    return 0


def _driver_command(driver: str) -> Callable[[argparse.Namespace, Console], int]:
    """``es-lottery imp`` / ``nets``: load the config, run (or resume) it, print the run directory."""

    def cmd(args: argparse.Namespace, console: Console) -> int:
        with _placement(args, console) as (out, console):  # before JAX starts (evosax's import starts it)
            module = importlib.import_module(f"es_lottery.experiments.{driver}")
            exp = module.load_config(args.config, seeds=args.seeds)
            path = module.run_experiment(exp, out=out, console=console)
            console.print(f"run directory: {path}")
        return 0

    cmd.__name__ = f"cmd_{driver}"
    return cmd


cmd_imp = _driver_command("imp")
cmd_nets = _driver_command("nets")


def cmd_migrate(args: argparse.Namespace, console: Console) -> int:
    from es_lottery.experiments import legacy_runs

    paths = args.paths or [args.out]
    reports = legacy_runs.migrate_paths(paths, args.out, console)
    console.print(f"{len(reports)} old run(s) or archive(s) migrated into {args.out}/store")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
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
    _add_placement_arguments(slt)
    slt.set_defaults(func=cmd_slt)
    imp = sub.add_parser(
        "imp", help="ES lottery tickets: iterative pruning with ES or GD (Lange & Sprekeler)"
    )
    imp.add_argument("config", help="YAML config (configs/imp/*.yaml)")
    imp.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the config)")
    imp.add_argument("--out", default="runs", help="output directory (default: runs/)")
    _add_placement_arguments(imp)
    imp.set_defaults(func=cmd_imp)
    nets = sub.add_parser("nets", help="Neuroevolution Ticket Search (Jackson et al.)")
    nets.add_argument(
        "config", nargs="?", default=None, help="YAML config (configs/nets/*.yaml; default: quickstart)"
    )
    nets.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the config)")
    nets.add_argument("--out", default="runs", help="output directory (default: runs/)")
    _add_placement_arguments(nets)
    nets.set_defaults(func=cmd_nets)
    sweep = sub.add_parser(
        "sweep", help="one job per grid point through submitit (local subprocesses or SLURM), one summary"
    )
    sweep.add_argument("config", help="YAML config of an slt, imp or nets experiment (configs/<kind>/*.yaml)")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2,…",
        help="a dotted config key and its values (read as YAML), e.g. ga.population_size=50,100; repeatable: "
        "the cartesian product",
    )
    sweep.add_argument("--executor", choices=("local", "slurm"), default="local")
    sweep.add_argument(
        "--kind", choices=("slt", "imp", "nets"), default=None, help="default: the config's folder"
    )
    sweep.add_argument("--out", default="runs", help="output directory (default: runs/)")
    sweep.add_argument("--name", default=None, help="the sweep's name (default: the config's name)")
    sweep.add_argument("--seeds", type=int, default=None, help="number of seeds of every job")
    sweep.add_argument(
        "--devices", default=None, metavar="N|all", help="every job's --devices (not part of any job key)"
    )
    sweep.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="SLURM executor parameter (partition, nodes, tasks_per_node, gpus_per_node, cpus_per_task, "
        "mem_gb, timeout_min, account, qos, constraint, exclusive, array_parallelism, setup, "
        "additional_parameters); repeatable",
    )
    sweep.add_argument(
        "--max-parallel", type=int, default=None, help="local executor: jobs at once (default 1)"
    )
    sweep.add_argument(
        "--no-wait", action="store_true", help="return after submitting (call again to collect)"
    )
    sweep.set_defaults(func=cmd_sweep)
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


OUT_COMMANDS = ("slt", "imp", "nets", "migrate")  # whose --out is a run directory


def _check_out(out: str) -> None:
    """``--out`` must be a directory this process can write (or one it can create)."""
    import os
    from pathlib import Path

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a directory; pass a directory (or remove it)")
    parent = path if path.exists() else next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {parent} is a file, not a directory; pass another --out")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: {parent} is not writable; pass a directory you can write")


def _os_error(err: OSError) -> str:
    """One line for a file-system error: the file, what went wrong, what to do."""
    if err.filename is None:
        return str(err)
    where = err.filename if err.filename2 is None else f"{err.filename} → {err.filename2}"
    hint = {
        PermissionError: "check its permissions or choose another --out",
        NotADirectoryError: "a part of that path is a file, not a directory",
        IsADirectoryError: "a directory stands where a file is expected",
        FileNotFoundError: "check the path",
    }.get(type(err), "check the path, the free space and the permissions")
    return f"{where}: {err.strerror or err} ({hint})"


def _interrupted(console: Console, argv: list[str] | None) -> int:
    """Ctrl-C: one line, status 130. From the command line the process ends at once (``os._exit``), so a
    second Ctrl-C or XLA's threads during interpreter teardown cannot print a traceback or crash."""
    import os
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut this short
    console.print("[yellow]interrupted;[/] rerun the same command to resume")
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, previous)  # called as a function: the caller's handler again
    return 130


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status: 0 done, 2 a bad config, argument or input file, 1 a
    file-system or internal error (never 0 after a failure), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=150)
    try:
        if args.command in OUT_COMMANDS and getattr(args, "out", None) is not None:
            _check_out(args.out)
        return int(args.func(args, console) or 0)
    except KeyboardInterrupt:
        return _interrupted(console, argv)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _error(console, _os_error(err) if isinstance(err, OSError) else str(err))
        return 2
    except OSError as err:
        _error(console, _os_error(err))
        return 1
    except Exception as err:
        import traceback

        traceback.print_exc()
        _error(
            console,
            f"{type(err).__name__}: {err} (the traceback above; finished results are kept: rerun the same "
            "command to resume)",
        )
        return 1


def _error(console: Console, message: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}")


if __name__ == "__main__":
    sys.exit(main())
