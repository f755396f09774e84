"""The committed results pages, rebuilt from the run store (and committed per-seed archives).

* :mod:`.slt` — ``docs/results/slt.md`` (strong tickets, Altmann et al.); per-seed archive in
  ``docs/results/slt/data/``.
* :mod:`.nets` — ``docs/results/nets.md`` (NeTS, Jackson et al.); per-seed archive in
  ``docs/results/nets/data/``.
* :mod:`.es_imp` — ``docs/results/es_imp.md`` (ES lottery tickets, Lange & Sprekeler); per-level archive in
  ``docs/results/es_imp/data/``.
* :mod:`.es_imp_control` — ``docs/results/es_imp_control.md`` (ES and PPO tickets on control tasks);
  per-level archive in ``docs/results/es_imp_control/data/``.

Each reads the jobs of the shipped configs (``configs/<experiment>/*.yaml``) from a run store (``--runs``,
old-layout run directories there are migrated first), merges them into its archive where it keeps one,
and writes the page; a job that was never run is reported as missing, never invented. Run them with
``es-lottery report slt|nets|es_imp`` (or ``python scripts/<name>_report.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PAGES", "add_arguments", "es_imp", "es_imp_control", "nets", "slt"]

#: page → (one-line description, default output, defaults of its options)
PAGES = {
    "slt": ("strong tickets by GA (Altmann et al. 2024)", "docs/results/slt.md"),
    "nets": ("NeTS vs GD-IMP vs random (Jackson et al. 2023)", "docs/results/nets.md"),
    "es_imp": ("ES lottery tickets (Lange & Sprekeler 2023)", "docs/results/es_imp.md"),
    "es_imp_control": (
        "ES and PPO lottery tickets on control tasks (Lange & Sprekeler 2023)",
        "docs/results/es_imp_control.md",
    ),
}


def add_arguments(page: str, parser: argparse.ArgumentParser) -> None:
    """The options of ``es-lottery report <page>`` (kept here, light, so the CLI imports no experiment)."""
    parser.add_argument(
        "--runs", default="runs", type=Path, help="the run store (old-layout runs there are migrated)"
    )
    parser.add_argument("--out", default=PAGES[page][1], type=Path, help="the page to write")
    if page in ("slt", "es_imp", "es_imp_control"):
        parser.add_argument(
            "--configs",
            default="configs/slt" if page == "slt" else "configs/imp",
            type=Path,
            help="the configs of the page's runs",
        )
    if page in ("slt", "nets", "es_imp", "es_imp_control"):
        parser.add_argument(
            "--data",
            default=None,
            type=Path,
            help=f"the committed per-seed archive (default: <out dir>/{page}/data)",
        )
    if page in ("slt", "nets", "es_imp", "es_imp_control"):
        parser.add_argument(
            "--discussion",
            default=f"scripts/{page}_discussion.md",
            type=Path,
            help="hand-written text appended verbatim",
        )


def parse_args(page: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"es-lottery report {page}", description=PAGES[page][0])
    add_arguments(page, parser)
    return parser.parse_args(argv)


def __getattr__(name: str):
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
