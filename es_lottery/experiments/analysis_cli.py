"""The command-line face of the analysis commands, light to import (nothing compiles, no jax):

``es-lottery transfer SOURCE_RUN --to CONFIG [--criterion C] [--seeds S …] [--out DIR] [--name NAME]``
    retrain a finished IMP run's tickets in the target config's setting (:mod:`.transfer`).
``es-lottery report RUN_DIR [RUN_DIR …] --out DIR [--connectivity] [--curvature]``
    one Markdown and one HTML page with every figure of the given runs (:mod:`.reports.runs`); also
    spelled ``es-lottery report runs RUN_DIR …``.
``es-lottery report analysis [--data DIR] [--out FILE] [--add RUN_DIR …]``
    ``docs/results/analysis.md`` from the committed per-level archives (:mod:`.reports.analysis`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PagesOrRunDirs", "add_transfer", "cmd_transfer", "register_report_pages"]

RUNS_PAGE = "runs"
ANALYSIS_PAGE = "analysis"


def add_transfer(sub) -> argparse.ArgumentParser:
    """Register ``es-lottery transfer`` on the CLI's subcommands."""
    p = sub.add_parser(
        "transfer", help="retrain a finished IMP run's tickets (mask, θ₀ per level) in another setting"
    )
    p.add_argument(
        "source", help="the source run: a view runs/<name>/, an old run directory, or an archive (.json)"
    )
    p.add_argument(
        "--to",
        required=True,
        dest="target",
        metavar="CONFIG",
        help="an imp config (configs/imp/*.yaml) whose data / env, trainer (es, gd, ppo) and seed base the "
        "tickets are retrained with; its network must have the source's shapes",
    )
    p.add_argument(
        "--criterion",
        default=None,
        help="the source criterion whose tickets transfer (default: magnitude, else its first IMP criterion)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="source seeds (default: all)")
    p.add_argument("--out", default="runs", help="output directory (default: runs/)")
    p.add_argument(
        "--name", default=None, help="the view's name (default: <target>-from-<source>-<criterion>)"
    )
    p.set_defaults(func=cmd_transfer)
    return p


def cmd_transfer(args: argparse.Namespace, console) -> int:
    from es_lottery.experiments import transfer

    path = transfer.run_transfer(
        args.source,
        args.target,
        criterion=args.criterion,
        seeds=args.seeds,
        out=args.out,
        name=args.name,
        console=console,
    )
    console.print(f"run directory: {path}")
    return 0


class PagesOrRunDirs(argparse._SubParsersAction):
    """``es-lottery report``'s pages, where a first word that names no page (a run directory) means the
    ``runs`` page: ``es-lottery report runs/a runs/b --out DIR``."""

    class _AnyName:
        """The pages for help and listing; every word passes argparse's choice check (a run directory
        is no page)."""

        def __init__(self, pages: dict):
            self.pages = pages

        def __contains__(self, key) -> bool:
            return True

        def __iter__(self):
            return iter(self.pages)

        def __len__(self) -> int:
            return len(self.pages)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices = self._AnyName(self._name_parser_map)

    def __call__(self, parser, namespace, values, option_string=None):
        pages = self._name_parser_map
        if values and values[0] not in pages and RUNS_PAGE in pages:
            values = [RUNS_PAGE, *values]
        super().__call__(parser, namespace, values, option_string)


def register_report_pages(pages) -> None:
    """Add the ``runs`` and ``analysis`` pages to ``es-lottery report``."""
    runs = pages.add_parser(
        RUNS_PAGE, help="Markdown + HTML page with every figure of the given runs (also: report RUN_DIR …)"
    )
    runs.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run views, old run directories or archives"
    )
    runs.add_argument("--out", required=True, type=Path, help="directory of report.md, report.html, figures/")
    runs.add_argument(
        "--connectivity",
        action="store_true",
        help="also the error barriers between consecutive levels (evaluates on the run's test data)",
    )
    runs.add_argument(
        "--curvature",
        action="store_true",
        help="also the curvature of a 1-D random projection per level (evaluates on the run's test data)",
    )
    analysis = pages.add_parser(
        ANALYSIS_PAGE, help="docs/results/analysis.md from the committed per-level archives"
    )
    analysis.add_argument(
        "--data",
        default=None,
        type=Path,
        help="the committed archives (default: <out dir>/analysis/data)",
    )
    analysis.add_argument("--out", default=Path("docs/results/analysis.md"), type=Path, help="the page")
    analysis.add_argument(
        "--add",
        nargs="+",
        type=Path,
        default=[],
        metavar="RUN_DIR",
        help="first archive these finished runs (views or transfer views) into --data",
    )
    analysis.add_argument(
        "--connectivity", action="store_true", help="barriers between consecutive levels (needs the data)"
    )
    analysis.add_argument(
        "--curvature", action="store_true", help="1-D projection curvature per level (needs the data)"
    )
