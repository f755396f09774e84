"""Rebuild docs/results/es_imp.md: `es-lottery report es_imp` (es_lottery.experiments.reports.es_imp)."""

import sys

from es_lottery.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", "es_imp", *sys.argv[1:]]))
