"""What the three experiments share: the ``network`` section, field checks, the experiment view.

* :class:`NetworkConfig` — the ``network:`` section of ``imp`` and ``nets`` and every entry of ``slt``'s
  ``networks:`` (``{name, sizes, weight_init, …}``, the arguments of ``networks.make_network``).
* :func:`check_name`, :func:`check_dataset`, :func:`check_dataset_args` — field checks for the typed loader
  (``config.load``), run before anything is loaded or compiled.
* :class:`View` — the experiment's directory ``<out>/<name>/`` that a user reads: the resolved
  ``config.yaml``, ``jobs.json`` (job → its directory in the store), ``results.jsonl``, ``metrics.jsonl``,
  ``summary.json`` and ``plots/``. It is rebuilt from the store after every run; nothing in it is the only
  copy of a result.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from es_lottery import networks
from es_lottery.experiments import config as config_lib
from es_lottery.experiments.store import STORE
from es_lottery.tasks import classification
from es_lottery.treeio import atomic_write, read_jsonl, write_json, write_jsonl

__all__ = [
    "DatasetName",
    "InitName",
    "NetworkConfig",
    "View",
    "check_dataset_args",
    "check_name",
    "default_init",
    "group_by",
    "load_experiment",
    "loaders",
    "rebuild_view",
]

NetworkName = Literal[networks.NETWORKS]
InitName = Literal[networks.INITS]
HiddenActivation = Literal[networks.HIDDEN_ACTIVATIONS]
OutputActivation = Literal[networks.OUTPUT_ACTIVATIONS]


DatasetName = Literal[classification.DATASETS]

RESERVED_NAMES = (STORE,)


def group_by(rows: Iterable[dict], key: str) -> dict[Any, list[dict]]:
    """Rows by the value of ``key``, in order of first appearance."""
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def default_init(name: str) -> str:
    """The ``weight_init`` a network gets from ``networks.make_network`` when none is given."""
    return {"mlp": networks.MLP.weight_init, "paper_cnn": networks.PaperCNN.weight_init}.get(
        name, inspect.signature(networks.lenet_300_100).parameters["weight_init"].default
    )


def check_name(value: str, path: str) -> str:
    """An experiment name: a plain directory name (its view lives in ``<out>/<name>/``)."""
    if not value or "/" in value or value.startswith(".") or value in RESERVED_NAMES:
        raise config_lib.ConfigError(
            path,
            f"must be a plain directory name (no '/', no leading '.', not {RESERVED_NAMES}), got {value!r}",
        )
    return value


def check_dataset_args(dataset: str, args: dict, path: str) -> dict:
    """``dataset_args`` must be arguments of the dataset's loader (``tasks.classification``)."""
    loader = {
        "moons": classification.moons,
        "circles": classification.circles,
        "blobs": classification.blobs,
        "digits": classification.digits,
        "xor": classification.xor,
    }.get(dataset, classification.image_dataset)
    allowed = [p for p in inspect.signature(loader).parameters if p != "name"]
    unknown = [k for k in args if k not in allowed]
    if unknown:
        raise config_lib.ConfigError(
            f"{path}.{unknown[0]}",
            f"not an argument of the {dataset!r} loader; allowed: {', '.join(allowed)}",
        )
    return args


@dataclass(frozen=True)
class NetworkConfig:
    """A network: the arguments of ``networks.make_network``."""

    name: NetworkName = field(
        default="mlp", metadata={"doc": "mlp, paper_cnn (28×28×1 images) or lenet_300_100"}
    )
    sizes: tuple[int | Literal["k"], ...] = field(
        default=(),
        metadata={"doc": "mlp only: layer sizes, input and output included (slt: 'k' = the class count)"},
    )
    weight_init: InitName | None = field(
        default=None,
        metadata={
            "doc": "null: the experiment's default (slt: uniform, the GA's U[-1, 1]; imp: lecun_normal; "
            "nets: the network's own, uniform for mlp, lecun_normal for paper_cnn and lenet_300_100)"
        },
    )
    hidden_activation: HiddenActivation = field(default="relu", metadata={"doc": "mlp only"})
    output_activation: OutputActivation = field(default="none", metadata={"doc": "mlp only"})
    num_classes: int | None = field(default=None, metadata={"doc": "paper_cnn only (null: 10)"})

    def __post_init__(self):
        if self.name == "mlp":
            if len(self.sizes) < 2:
                raise ValueError(
                    f"sizes: an mlp needs ≥ 2 layer sizes (input, hidden…, output), got {list(self.sizes)}"
                )
            if any(s != "k" and s < 1 for s in self.sizes):
                raise ValueError(f"sizes must be positive, got {list(self.sizes)}")
        else:
            bad = [
                f
                for f, v in (
                    ("sizes", self.sizes != ()),
                    ("hidden_activation", self.hidden_activation != "relu"),
                )
                if v
            ]
            bad += ["output_activation"] if self.output_activation != "none" else []
            if bad:
                raise ValueError(f"{bad[0]} applies to name 'mlp' only, not {self.name!r}")
        if self.num_classes is not None and self.name != "paper_cnn":
            raise ValueError(f"num_classes applies to name 'paper_cnn' only, not {self.name!r}")

    def with_classes(self, k: int | None) -> NetworkConfig:
        """``sizes`` with every ``'k'`` replaced by the class count ``k``."""
        if "k" not in self.sizes:
            return self
        if k is None:
            raise ValueError(f"sizes {list(self.sizes)} use 'k' (the class count), but no class count is set")
        return self.replace(sizes=tuple(k if s == "k" else s for s in self.sizes))

    def resolved(self, default_init: str) -> NetworkConfig:
        """The same network with ``weight_init`` filled in (what identifies it in the store)."""
        return self if self.weight_init is not None else self.replace(weight_init=default_init)

    def module(self, default_init: str = "lecun_normal"):
        """The flax module."""
        net = self.resolved(default_init)
        if "k" in net.sizes:
            raise ValueError(f"sizes {list(net.sizes)} still hold 'k'")
        kw: dict[str, Any] = {"weight_init": net.weight_init}
        if net.name == "mlp":
            kw.update(sizes=list(net.sizes), hidden_activation=net.hidden_activation)
            kw["output_activation"] = net.output_activation
        if net.num_classes is not None:
            kw["num_classes"] = net.num_classes
        return networks.make_network(net.name, **kw)

    def replace(self, **kw) -> NetworkConfig:
        import dataclasses

        return dataclasses.replace(self, **kw)


def loaders(cls: type, experiment: str, default: dict | None = None):
    """``(parse_config, load_config)`` of an experiment's config class ``cls``: ``parse_config(mapping,
    seeds=None)`` and ``load_config(path, seeds=None)`` (``path=None``: the embedded ``default``). Old
    spellings are translated first (``legacy.upgrade``); every error names the field path (and the file)."""

    def parse_config(data: dict, seeds: int | None = None):
        """Validate a config mapping (every error names its field path) without compiling anything."""
        return load_experiment(cls, data, experiment, seeds=seeds)

    def load_config(path: str | Path | None, seeds: int | None = None):
        """The config at ``path`` (``None``: the embedded quickstart, where there is one)."""
        if path is None:
            if default is None:
                raise ValueError(f"es-lottery {experiment} needs a config file")
            return parse_config(default, seeds)
        return load_experiment(cls, config_lib.load_yaml(path), experiment, source=str(path), seeds=seeds)

    return parse_config, load_config


def load_experiment(
    cls: type, data: Any, experiment: str, source: str | None = None, seeds: int | None = None
):
    """The typed config ``cls`` from a mapping: old spellings translated first (with a ``FutureWarning``
    naming the new keys), then :func:`config.load`; ``seeds`` overrides the config's. Errors name the
    field path (and the file, when ``source`` is given)."""
    from es_lottery.experiments import legacy

    data = legacy.upgrade(experiment, data, source=source)
    if seeds is not None:
        data = {**data, "seeds": seeds}
    try:
        return config_lib.load(cls, data)
    except config_lib.ConfigError as err:
        if source is None:
            raise
        raise config_lib.ConfigError(
            f"{source}: {err.path}" if err.path else source, str(err).split(": ", 1)[-1]
        ) from None


# ----------------------------------------------------------------------------------------------
# the experiment's view


class View:
    """``<out>/<name>/``: what a user reads about one config (rebuilt from the store after every run)."""

    def __init__(self, out: str | Path, name: str):
        self.path = Path(out) / name
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)

    def write_config(self, cfg: Any) -> None:
        text = yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False)
        atomic_write(self.path / "config.yaml", lambda fh: fh.write(text), mode="w")

    def write_jobs(self, jobs: dict[str, str]) -> None:
        write_json(self.path / "jobs.json", jobs)

    def write_rows(self, filename: str, rows: Iterable[dict]) -> None:
        write_jsonl(self.path / filename, rows)

    def read(self, filename: str) -> list[dict]:
        return read_jsonl(self.path / filename)

    def write_json(self, filename: str, data: Any) -> None:
        write_json(self.path / filename, data)


def rebuild_view(exp: Any, out: str | Path, write: Callable, table: Callable, console=None) -> Path:
    """Rebuild the view ``<out>/<exp.name>/`` under its lock: ``write(exp, out, view)`` writes it and returns
    the summary, ``table(summary, title)`` renders that summary for ``console`` (when given)."""
    from es_lottery.experiments import locks

    view = View(out, exp.name)
    with locks.hold(view.path, f"the view {view.path}"):
        summary = write(exp, out, view)
    if console is not None:
        console.print(table(summary, title=f"{exp.name} ({exp.dataset})"))
    return view.path
