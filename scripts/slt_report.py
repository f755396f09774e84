"""Rebuild docs/results/slt.md: `es-lottery report slt` (es_lottery.experiments.reports.slt)."""

import sys

from es_lottery.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", "slt", *sys.argv[1:]]))
