"""The run store: every job in a directory named by what changes its result, seeds as subdirectories.

In the manner of open_lth, a job's directory is keyed by a hash of ONLY the fields that change its result
AND differ from their defaults (:func:`key_of` over ``config.nondefault``); the run's name, the number of
seeds, progress and checkpoint intervals are not part of any key. So adding a field with a default to a
dataclass renames nothing, adding a baseline or a variant to a config adds a directory next to the finished
ones, and re-running a config runs only what is missing. Layout under the output directory (``runs/``)::

    store/<experiment>/<stem>-<key>/            a trunk: what its branches share (data, network, seed base)
        job.json                                {"format", "experiment", "stem", "fields"}: the hashed fields
        <branch>[-<key>]/                       a branch (a GA variant, a baseline, an IMP criterion …);
            job.json                            the key only when a field differs from its default
            seed_<s>/                           one seed (replicate) of it
    <name>/                                     the experiment's view (rebuilt after every run):
        config.yaml  jobs.json  results.jsonl  metrics.jsonl  summary.json  plots/

``jobs.json`` maps every job of the config to its directory in the store, so the view says where each number
comes from. A branch reuses its trunk's data (a baseline chain's dense level 0 is its source's level 0; an
edge-popup job matched to the GA reads the GA branches' results, whose keys are part of its own).

Arrays: ONE format for results and checkpoints, NumPy ``.npz`` with one array per pytree leaf named by its
tree path (``es_lottery.treeio``, which says why ``.npz`` and not orbax).

Finished work is marked by a JSON file written LAST (``result.json`` of a seed, ``metrics.json`` of a
pruning level): its presence is the only test of "done", and a finished seed is never recorded again.
Every file is written under a temporary name unique to its writer and renamed into place
(``treeio.atomic_write``); the drivers run each job under a lock (``experiments.locks``), so two runs into
one directory never run or record the same job twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from es_lottery.treeio import read_json, read_jsonl, to_jsonable, write_json, write_jsonl

FORMAT = 2
STORE = "store"
JOB_FILE = "job.json"

__all__ = ["FORMAT", "STORE", "Job", "dirname", "key_of"]


def key_of(fields: Mapping) -> str:
    """The 10-hex-digit key of a job's (non-default) fields."""
    blob = json.dumps(to_jsonable(fields), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def dirname(stem: str, fields: Mapping) -> str:
    """``stem`` when every field is at its default (``fields`` empty), else ``<stem>-<key>``."""
    if "/" in stem or stem.startswith("."):
        raise ValueError(f"a job name must be a plain directory name, got {stem!r}")
    return stem if not fields else f"{stem}-{key_of(fields)}"


# ----------------------------------------------------------------------------------------------
# jobs


@dataclass(frozen=True)
class Job:
    """A directory of the store: a trunk (:meth:`open`) or a branch of one (:meth:`branch`). Opening one
    writes nothing; its ``job.json`` (and its trunk's) is written with the first result (:meth:`ensure`),
    so reading a store never changes it."""

    path: Path
    stem: str
    fields: dict
    store: Path  # the store's root directory (``<out>/store``)
    parent: Job | None = None
    experiment: str | None = None

    @classmethod
    def open(cls, out: str | Path, experiment: str, stem: str, fields: Mapping) -> Job:
        """The trunk ``<out>/store/<experiment>/<stem>-<key of fields>``."""
        store = Path(out) / STORE
        path = store / experiment / f"{stem}-{key_of(fields)}"
        return cls(path, stem, to_jsonable(dict(fields)), store, None, experiment)._checked()

    def branch(self, stem: str, fields: Mapping | None = None) -> Job:
        """The branch ``<trunk>/<stem>`` or ``<trunk>/<stem>-<key>`` (when ``fields``, the non-default
        fields, are not empty)."""
        fields = to_jsonable(dict(fields or {}))
        return Job(self.path / dirname(stem, fields), stem, fields, self.store, self)._checked()

    def _record(self) -> dict:
        record = {"format": FORMAT, "stem": self.stem, "fields": self.fields}
        if self.experiment is not None:
            record["experiment"] = self.experiment
        return record

    def _checked(self) -> Job:
        f = self.path / JOB_FILE
        if f.exists():
            have = read_json(f)
            if have.get("fields") != self.fields or have.get("stem") != self.stem:
                raise ValueError(
                    f"{f} describes another job ({have.get('stem')!r}, {have.get('fields')}) than "
                    f"{self.stem!r} {self.fields}: a key collision or an edited file; move the directory away"
                )
        return self

    def ensure(self) -> Job:
        """Create the directory with its ``job.json`` (and the trunk's)."""
        if self.parent is not None:
            self.parent.ensure()
        if not (self.path / JOB_FILE).exists():
            write_json(self.path / JOB_FILE, self._record())
        return self

    @property
    def relpath(self) -> str:
        """The path below the store's root (what a view's ``jobs.json`` records)."""
        return self.path.relative_to(self.store).as_posix()

    def seed(self, s: int) -> Path:
        return self.path / f"seed_{int(s)}"

    def result_path(self, s: int) -> Path:
        return self.seed(s) / "result.json"

    def done(self, s: int) -> bool:
        return self.result_path(s).is_file()

    def done_seeds(self, seeds: Iterable[int]) -> set[int]:
        return {s for s in seeds if self.done(s)}

    def result(self, s: int) -> dict | None:
        p = self.result_path(s)
        return read_json(p) if p.is_file() else None

    def results(self, seeds: Iterable[int]) -> list[dict]:
        """The finished seeds' ``result.json`` rows, in seed order."""
        return [r for r in (self.result(s) for s in sorted(seeds)) if r is not None]

    def metrics(self, s: int) -> list[dict]:
        return read_jsonl(self.seed(s) / "metrics.jsonl")

    def finish_seed(self, s: int, result: Mapping, metrics: Iterable[dict] | None = None) -> bool:
        """Write seed ``s``'s metrics rows, then its ``result.json`` (the "finished" marker); a seed that
        is finished already keeps its first record (returns False: nothing written)."""
        if self.done(s):
            return False
        self.ensure()
        if metrics is not None:
            write_jsonl(self.seed(s) / "metrics.jsonl", metrics)
        write_json(self.result_path(s), result)
        return True
