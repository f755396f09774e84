"""Rebuild docs/results/analysis.md from the committed archives: `es-lottery report analysis`
(es_lottery.experiments.reports.analysis). Archive finished runs first with `--add RUN_DIR …`."""

import sys

from es_lottery.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", "analysis", *sys.argv[1:]]))
