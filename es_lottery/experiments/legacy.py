"""Old spellings of the experiment configs, translated to the current ones (with a ``FutureWarning``).

Before the typed loader the three experiments spelled the same things differently. A config mapping that
still uses an old spelling is translated here, once, before ``config.load`` sees it, and a
``FutureWarning`` names every old key and its new spelling (``ga.pop_size → ga.population_size``). The
YAMLs under ``configs/`` use the new spellings; this module keeps old files, the configs stored in old run
directories and the committed archives readable. It is the only place that knows the old spellings.

========  ==========================================  ============================================
kind      old                                         new
========  ==========================================  ============================================
slt       ``archs: {A: [2, 20, 2]}``                  ``networks: {A: {sizes: [2, 20, 2]}}``
slt       ``ga.pop_size``                             ``ga.population_size``
imp       ``network.name: lenet`` / ``cnn``           ``lenet_300_100`` / ``paper_cnn``
imp       ``trainer.lr`` (ES)                         ``trainer.learning_rate``
nets      ``nets.pop_size``, ``nets.inner_lr``        ``nets.population_size``, ``nets.inner_learning_rate``
nets      ``final_training.lr``                       ``final_training.learning_rate``
========  ==========================================  ============================================
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

__all__ = ["NETWORK_ALIASES", "upgrade"]

NETWORK_ALIASES = {"lenet": "lenet_300_100", "cnn": "paper_cnn"}


def _rename(section: dict, old: str, new: str, where: str, notes: list[str]) -> None:
    if isinstance(section, dict) and old in section:
        if new in section:
            raise ValueError(
                f"{where}{old} and {where}{new} are the same field (old and new spelling); keep {new}"
            )
        section[new] = section.pop(old)
        notes.append(f"{where}{old} → {where}{new}")


def upgrade(experiment: str, data: Any, source: str | None = None) -> Any:
    """``data`` with the old spellings of ``experiment`` (``slt``, ``imp``, ``nets``) replaced; a
    ``FutureWarning`` lists them. Anything that is not a mapping is returned as it is (the loader reports
    it)."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    notes: list[str] = []
    if experiment == "slt":
        if "archs" in data and "networks" not in data:
            archs = data.pop("archs")
            data["networks"] = (
                {k: {"sizes": v} if isinstance(v, list | tuple) else v for k, v in archs.items()}
                if isinstance(archs, dict)
                else archs
            )
            notes.append("archs: {label: sizes} → networks: {label: {sizes: …}}")
        _rename(data.get("ga"), "pop_size", "population_size", "ga.", notes)
    elif experiment == "imp":
        net = data.get("network")
        if isinstance(net, dict) and net.get("name") in NETWORK_ALIASES:
            new = NETWORK_ALIASES[net["name"]]
            notes.append(f"network.name: {net['name']} → {new}")
            data["network"] = {**net, "name": new}
        trainer = data.get("trainer")
        if isinstance(trainer, dict) and trainer.get("type", "es") == "es":
            _rename(trainer, "lr", "learning_rate", "trainer.", notes)
    elif experiment == "nets":
        _rename(data.get("nets"), "pop_size", "population_size", "nets.", notes)
        _rename(data.get("nets"), "inner_lr", "inner_learning_rate", "nets.", notes)
        _rename(data.get("final_training"), "lr", "learning_rate", "final_training.", notes)
    else:
        raise ValueError(f"unknown experiment {experiment!r}; allowed: slt, imp, nets")
    if notes:
        where = f" in {source}" if source else ""
        warnings.warn(
            f"old config spelling{where} (read, but rename it): {'; '.join(notes)}",
            FutureWarning,
            stacklevel=3,
        )
    return data
