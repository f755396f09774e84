"""Write docs/configs.md from the config dataclasses (es_lottery.experiments.config_reference)."""

import sys

from es_lottery.experiments.config_reference import main

if __name__ == "__main__":
    sys.exit(main())
