"""Rebuild docs/results/nets.md: `es-lottery report nets` (es_lottery.experiments.reports.nets)."""

import sys

from es_lottery.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", "nets", *sys.argv[1:]]))
