"""Fitness sources with one protocol (``base``): classification, control (gymnax / Brax), your own function.

Names load lazily: ``tasks.control`` (which imports gymnax and Brax) only when used.
"""

from es_lottery._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "base": "es_lottery.tasks.base",
        "classification": "es_lottery.tasks.classification",
        "control": "es_lottery.tasks.control",
        "supervised": "es_lottery.tasks.supervised",
        "MaskedPopulation": "es_lottery.tasks.base:MaskedPopulation",
        "Task": "es_lottery.tasks.base:Task",
        "from_function": "es_lottery.tasks.base:from_function",
    },
)
