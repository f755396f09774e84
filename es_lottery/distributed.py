"""Devices and hosts: every search evaluates its population over all devices of all processes.

Three settings, none of them part of any config hash — they change WHERE members are evaluated, never
what a run computes:

* **devices** — :func:`use_devices` (a context manager; the CLI's ``--devices N|all``). Tasks built inside
  it (``classification.make_task``, ``control.make_control_task``, ``base.from_function`` and every search's
  ``make_task``) carry a :class:`PopulationSharding` as a static field, so a jitted search compiles once per
  sharding and never reuses a stale program. Their fitness splits the population into FIXED-SIZE member
  blocks (``ceil(P / blocks)``, ``blocks`` = 8 by default, or the task's own block: the CNN's 4 members,
  a gymnax control task's 8), pads the block count to a multiple of the device count (padding repeats
  member 0 and is dropped) and runs the blocks under ``jax.shard_map`` over a 1-D mesh ``("pop",)``
  (``jax.make_mesh``): each device evaluates its blocks one after another (``lax.map``), the results are
  all-gathered, and everything else — the search state, ask/tell, selection — stays replicated
  (``NamedSharding(mesh, P())``). Every device count evaluates exactly the same block shapes. Tasks built
  outside the context (the default) evaluate the whole population in one call, as before: those are the
  pinned numbers (``tests/pins.json``).
* **process setup** — :func:`configure` (the CLI's ``--devices`` calls it before JAX starts): on a CPU host,
  N host devices (XLA:CPU runs each of these kernels on ONE thread — CPU/wall ≈ 1.0 in ``benchmarks/`` —
  so a second core is only used through a second host device), and reproducible compilation (below).
* **hosts** — :func:`initialize` calls ``jax.distributed.initialize()`` (SLURM and other clusters are
  auto-detected; other launchers pass the coordinator address, process count and id). The mesh then spans
  the devices of every process; inputs may be process-local (each process passes the same values, as the
  deterministic searches do) or explicit global arrays (:func:`replicate`, built with
  ``jax.make_array_from_process_local_data``). Only :func:`is_primary` (process 0) should write run
  directories and logs; :func:`process_output_dir` gives the other processes a private scratch copy, so
  that an experiment layer that does not check :func:`is_primary` still writes each run directory once.

Why fixed blocks. The kernels are not invariant to how many members they see at once. Measured here
(``population.evaluate_masks``, 72 GA members, 5000 points): accuracy is bit-identical for every split,
but the cross-entropy / MSE of the GA table path changes in the last bits when the members are split into
blocks of 7, 18 or 24 (the population GEMM changes shape), even with the data chunk held fixed; the paper
CNN changes when a block is not a whole number of its internal 4-member blocks. A block size that depends
on the population and never on the device count makes every device count compute the same shapes; the
data chunk is planned for the whole population.

Why reproducible compilation. Same shapes were not enough: XLA compiles a 1-device program and a
multi-device (SPMD) program through different pass orders, and its algebraic simplifier rewrote
``A / broadcast(B)`` into ``A · broadcast(1/B)`` only in the 1-device one (seen in the HLO of evosax SNES's
``(x − mean) / std``), so an ES's mean and std differed in the last bit between 1 and 2 or 4 devices while
every fitness was identical; 2 and 4 devices agreed. With that pass disabled
(:data:`REPRODUCIBLE_XLA_FLAGS`, set by :func:`configure`) GA, ES, NeTS and control runs are bit-identical
on 1, 2 and 4 devices (``tests/test_sharding_searches.py``), at 2–5 % more CPU time (ES-CNN and GA-D
generations). The GA and NeTS runs tested were identical on 1 and 4 devices even without it.

Sharded vs unsharded. GA runs with accuracy fitness and the NeTS runs tested give the unsharded (pinned)
numbers exactly; the paper-CNN ES fitness too (its blocks are whole CNN blocks). GA cross-entropy fitness,
small-population MLP ES fitness and control runs differ from the unsharded ones in the last bits (other
block shapes, or the other compilation) — they are identical across device counts, not to the default.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

POP_AXIS = "pop"
DEFAULT_BLOCKS = 8  # member blocks per population: divides 1, 2, 4 and 8 devices
BLOCKS_ENV = "ES_LOTTERY_BLOCKS"  # overrides DEFAULT_BLOCKS (e.g. 32 on 32 GPUs: every device gets work)

__all__ = [
    "DEFAULT_BLOCKS",
    "POP_AXIS",
    "REPRODUCIBLE_XLA_FLAGS",
    "PopulationSharding",
    "barrier",
    "cli_session",
    "command_session",
    "configure",
    "current_sharding",
    "initialize",
    "is_primary",
    "make_sharding",
    "map_blocks",
    "parse_devices",
    "parse_distributed",
    "process_count",
    "process_index",
    "process_output_dir",
    "replicate",
    "reproducible_compilation",
    "resolve_sharding",
    "to_host",
    "use_devices",
]


# ----------------------------------------------------------------------------------------------
# the population sharding


@dataclass(frozen=True)
class PopulationSharding:
    """Where a task evaluates its population: a 1-D device mesh with axis ``"pop"`` and the number of
    member blocks a population is split into (hashable: tasks keep it as a static field)."""

    mesh: Mesh
    blocks: int = DEFAULT_BLOCKS

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def block_size(self, num_members: int) -> int:
        """Members per block for a population of ``num_members``: ``ceil(num_members / blocks)``."""
        return max(1, -(-int(num_members) // self.blocks))

    def describe(self) -> str:
        kinds = sorted({d.platform for d in self.mesh.devices.flat})
        return f"{self.num_devices} {'/'.join(kinds)} device(s), {self.blocks} member blocks"


def _check_blocks(blocks) -> int:
    if blocks is None:
        text = os.environ.get(BLOCKS_ENV, "")
        try:
            blocks = int(text) if text.strip() else DEFAULT_BLOCKS
        except ValueError:
            raise ValueError(f"${BLOCKS_ENV} must be a positive int (member blocks), got {text!r}") from None
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or blocks < 1:
        raise ValueError(f"blocks must be a positive int (member blocks per population), got {blocks!r}")
    return int(blocks)


def make_sharding(devices: int | str | Sequence = "all", blocks: int | None = None) -> PopulationSharding:
    """A :class:`PopulationSharding` over ``devices``: ``"all"`` (every device of every process), an int
    N (the first N of ``jax.devices()``) or a sequence of devices. ``blocks``: member blocks per
    population (None: ``$ES_LOTTERY_BLOCKS`` or :data:`DEFAULT_BLOCKS`); results depend on it, never on
    the devices — use at least as many blocks as devices, or some devices only evaluate padding."""
    blocks = _check_blocks(blocks)
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be 'all', a positive int or a list of devices, got {devices!r}")
        chosen = list(available)
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise ValueError(f"devices must be 'all' or a positive int, got {devices!r}")
        if n > len(available):
            raise ValueError(
                f"devices={n} but JAX sees {len(available)} device(s) ({available[0].platform}); allowed: "
                f"1 … {len(available)} or 'all'. On a CPU host call "
                f"es_lottery.distributed.configure(devices={n}) (the CLI's --devices {n}) before JAX "
                f"initialises, or set XLA_FLAGS=--xla_force_host_platform_device_count={n}"
            )
        if jax.process_count() > 1 and n != len(available):
            raise ValueError(
                f"devices={n} with {jax.process_count()} processes: a multi-process run must use all "
                f"{len(available)} devices (devices='all')"
            )
        chosen = list(available[:n])
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices must not be an empty list")
    mesh = jax.make_mesh((len(chosen),), (POP_AXIS,), axis_types=(AxisType.Auto,), devices=chosen)
    return PopulationSharding(mesh=mesh, blocks=blocks)


_CURRENT: contextvars.ContextVar[PopulationSharding | None] = contextvars.ContextVar(
    "es_lottery_population_sharding", default=None
)


def current_sharding() -> PopulationSharding | None:
    """The sharding set by the innermost :func:`use_devices` (None outside: unsharded evaluation)."""
    return _CURRENT.get()


def resolve_sharding(sharding: Any = "context") -> PopulationSharding | None:
    """What a task constructor stores: ``"context"`` → :func:`current_sharding`; None → unsharded; a
    :class:`PopulationSharding` as it is."""
    if isinstance(sharding, str) and sharding == "context":
        return current_sharding()
    if sharding is None or isinstance(sharding, PopulationSharding):
        return sharding
    raise TypeError(
        f"sharding must be 'context', None or a PopulationSharding (distributed.make_sharding), "
        f"got {type(sharding).__name__}"
    )


@contextlib.contextmanager
def use_devices(devices: int | str | Sequence | None = "all", blocks: int | None = None) -> Iterator:
    """Tasks built inside this context evaluate their populations over ``devices`` (see the module doc):
    ``"all"``, an int N (the first N devices) or a list of devices; None turns sharding off (the whole
    population in one call, as without the context). Yields the :class:`PopulationSharding` (or None).

    The setting is read when a task is BUILT (it becomes a static field of the task), so build tasks — or
    call ``run_experiment``, which builds them — inside the context.
    """
    sharding = None if devices is None else make_sharding(devices, blocks)
    token = _CURRENT.set(sharding)
    try:
        yield sharding
    finally:
        _CURRENT.reset(token)


# ----------------------------------------------------------------------------------------------
# sharded evaluation of member blocks


def _pad_blocks(tree, npop: int, block: int, num_blocks: int):
    pad = num_blocks * block - npop

    def one(a):
        if pad:
            a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad, *a.shape[1:]))])
        return a.reshape(num_blocks, block, *a.shape[1:])

    return jax.tree_util.tree_map(one, tree)


def map_blocks(
    fn: Callable,
    members,
    shared,
    sharding: PopulationSharding,
    block: int | None = None,
):
    """Evaluate ``members`` (every leaf with the leading population axis P) in fixed-size blocks over the
    devices of ``sharding``.

    ``fn(block_members, live, shared) -> (per_member, per_block)``: ``block_members`` holds ``block`` members
    (leading axis), ``live`` (block,) bool marks the real ones (padding repeats member 0), ``shared`` is
    passed to every block (replicated); ``per_member`` leaves have the leading block axis, ``per_block`` is
    any pytree (e.g. sums over the block; None for none). ``block``: members per block (default
    ``sharding.block_size(P)``); it must not depend on the device count, or the results would.

    Returns ``(per_member with leading axis P, per_block with leading axis ceil(P / block))``, both
    replicated on every device. Jittable; call it inside the search's jitted code.
    """
    npop = int(jax.tree_util.tree_leaves(members)[0].shape[0])
    # barriers before the padding and after the final slice: the padded block count depends on the device
    # count, and XLA must not fuse the search's own code (ask, tell, selection) with shapes that differ
    # between device counts — it would compile that code differently and round differently (measured:
    # SNES's mean and std differed in the last bits between 1 and 4 devices without them)
    members, shared = jax.lax.optimization_barrier((members, shared))
    block = sharding.block_size(npop) if block is None else max(1, min(int(block), npop))
    real_blocks = -(-npop // block)
    ndev = sharding.num_devices
    num_blocks = -(-real_blocks // ndev) * ndev
    blocked = _pad_blocks(members, npop, block, num_blocks)
    live = (jnp.arange(num_blocks * block) < npop).reshape(num_blocks, block)
    mesh = sharding.mesh
    # the padded population is computed replicated (the search state is); each device then reads its slice
    replicated = NamedSharding(mesh, P())
    blocked = jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, replicated), blocked)

    def local(mb, lv, sh):
        out = jax.lax.map(lambda a: fn(a[0], a[1], sh), (mb, lv))
        return jax.tree_util.tree_map(lambda o: jax.lax.all_gather(o, POP_AXIS, tiled=True), out)

    # check_vma=False: the kernels' data scans start from replicated zeros and accumulate per-device sums
    per_member, per_block = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(POP_AXIS), P(POP_AXIS), P()),
        out_specs=P(),
        check_vma=False,
    )(blocked, live, shared)
    per_member = jax.tree_util.tree_map(
        lambda o: o.reshape(num_blocks * block, *o.shape[2:])[:npop], per_member
    )
    per_block = jax.tree_util.tree_map(lambda o: o[:real_blocks], per_block)
    return jax.lax.optimization_barrier((per_member, per_block))


# ----------------------------------------------------------------------------------------------
# process setup before JAX starts: host devices, reproducible compilation


REPRODUCIBLE_XLA_FLAGS = ("--xla_disable_hlo_passes=algsimp",)


def _backend_initialised() -> bool:
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def reproducible_compilation() -> bool:
    """Whether this process compiles with :data:`REPRODUCIBLE_XLA_FLAGS` (see :func:`configure`)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return all(f in flags for f in REPRODUCIBLE_XLA_FLAGS)


def configure(devices: int | str | None = None, reproducible: bool = True) -> dict:
    """Set up this process before JAX initialises its backend (the CLI's ``--devices`` calls it first).

    ``devices``: an int N makes the CPU backend expose N host devices — JAX's ``jax_num_cpu_devices``,
    the same as ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, also exported as
    ``JAX_NUM_CPU_DEVICES`` for child processes; harmless on GPU hosts, where it only concerns the CPU
    platform. ``"all"`` / None leave the device count alone.

    ``reproducible`` adds :data:`REPRODUCIBLE_XLA_FLAGS` to ``XLA_FLAGS``: XLA's algebraic simplifier
    rewrites some float expressions in a 1-device program but not in a multi-device (SPMD) one — measured
    here: ``A / broadcast(B)`` → ``A · broadcast(1/B)`` in evosax SNES's ``(x − mean) / std``, so an ES's
    mean and std differed in the last bit between 1 and 2 or 4 devices although every fitness was
    identical. Without that pass, GA, ES, NeTS and control runs are bit-identical on 1, 2 and 4 devices
    (``tests/test_sharding_searches.py``); it cost 2–5 % CPU time on the ES-CNN and GA-D generations.

    Raises ``RuntimeError`` (saying what to do) when JAX is already initialised and the request cannot be
    met any more. Returns what was set.
    """
    done: dict = {}
    if _backend_initialised():
        if isinstance(devices, (int, np.integer)) and jax.default_backend() == "cpu":
            have = len(jax.devices("cpu"))
            if have < int(devices):
                raise RuntimeError(
                    f"JAX is already initialised with {have} CPU device(s); {devices} were requested."
                    " Call es_lottery.distributed.configure(devices=N) before the first JAX "
                    "computation (es-lottery --devices N does), or start Python with "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
                )
        if reproducible and not reproducible_compilation():
            raise RuntimeError(
                "JAX is already initialised: reproducible compilation must be requested before the first JAX "
                f"computation (configure(...) first, or XLA_FLAGS='{' '.join(REPRODUCIBLE_XLA_FLAGS)}')"
            )
        return {"devices": devices, "reproducible": reproducible_compilation(), "already_initialised": True}
    if devices is not None and not (isinstance(devices, str) and devices == "all"):
        if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
            raise ValueError(f"devices must be 'all' or a positive int, got {devices!r}")
        jax.config.update("jax_num_cpu_devices", int(devices))
        os.environ["JAX_NUM_CPU_DEVICES"] = str(int(devices))
        done["devices"] = int(devices)
    if reproducible:
        flags = os.environ.get("XLA_FLAGS", "").split()
        flags += [f for f in REPRODUCIBLE_XLA_FLAGS if f not in flags]
        os.environ["XLA_FLAGS"] = " ".join(flags)
        done["xla_flags"] = os.environ["XLA_FLAGS"]
    return done


# ----------------------------------------------------------------------------------------------
# several processes (hosts)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    **kwargs,
) -> dict:
    """``jax.distributed.initialize`` (once per process, before any JAX computation).

    Without arguments JAX detects the cluster (SLURM: one process per task, e.g. ``srun`` with
    ``--ntasks-per-node``; also Open MPI, Cloud TPU, …). Other launchers pass ``coordinator_address``
    (``host:port`` of process 0), ``num_processes`` and ``process_id``. Extra keyword arguments go to
    ``jax.distributed.initialize``. Returns ``{process_index, process_count, local_devices, devices}``.
    A second call in the same process returns the same description and initialises nothing.
    """
    if not jax.distributed.is_initialized():
        explicit = [coordinator_address, num_processes, process_id]
        if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
            raise ValueError(
                "distributed: give all of coordinator_address, num_processes and process_id, or none of "
                "them (cluster auto-detection, e.g. SLURM)"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            **kwargs,
        )
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
    }


def process_index() -> int:
    return int(jax.process_index())


def process_count() -> int:
    return int(jax.process_count())


def is_primary() -> bool:
    """True on process 0 (the one that writes run directories, logs and plots); True without
    ``jax.distributed``."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for with one process).
    E.g. after process 0 appended results that every process reads next."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicate(tree, sharding: PopulationSharding | None = None):
    """Every array leaf of ``tree`` (process-local values, the same on every process) as a global array
    replicated over the mesh (``jax.make_array_from_process_local_data``); PRNG key arrays included."""
    sharding = sharding or current_sharding() or make_sharding("all")
    target = NamedSharding(sharding.mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.make_array_from_process_local_data(target, np.asarray(x))
        return x

    return jax.tree_util.tree_map(put, tree)


def to_host(tree):
    """NumPy copies of every array leaf, on every process (sharded global arrays are all-gathered)."""

    def get(x):
        if isinstance(x, jax.Array):
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                x = jax.random.key_data(x)
            if not x.is_fully_addressable and not x.is_fully_replicated:
                from jax.experimental import multihost_utils

                return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(get, tree)


def process_output_dir(out: str | Path, run_dir: str | Path | None = None) -> Path:
    """The output directory THIS process should pass to ``run_experiment``.

    Process 0: ``out`` itself. Other processes: a private scratch directory (under the system temp dir)
    holding a copy of ``out/<run_dir>`` — or, with ``run_dir=None``, of everything in ``out`` but its
    ``sweeps/`` bookkeeping — as it is now, so that every process reads the same finished jobs and
    checkpoints (and so runs the same computations, which the collectives need) while only process 0
    writes into ``out``. Call it before the run writes anything. Until the experiment layer guards its
    writes with :func:`is_primary`, this is how several processes run one experiment.
    """
    out = Path(out)
    if is_primary():
        return out
    scratch = Path(tempfile.mkdtemp(prefix=f"es_lottery-process{process_index()}-"))
    if run_dir is not None:
        if (out / run_dir).is_dir():
            shutil.copytree(out / run_dir, scratch / run_dir)
    elif out.is_dir():
        for entry in out.iterdir():
            if entry.name == "sweeps":
                continue
            if entry.is_dir():
                shutil.copytree(entry, scratch / entry.name)
            else:
                shutil.copy2(entry, scratch / entry.name)
    return scratch


# ----------------------------------------------------------------------------------------------
# the command line's --devices and --distributed


def parse_devices(value: str | int | None) -> int | str | None:
    """``--devices`` → None (not given), ``"all"`` or a positive int; a ``ValueError`` names the flag."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "all":
        return "all"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"--devices must be 'all' or a positive int, got {value!r}")


def parse_distributed(value: str | bool | None) -> dict | None:
    """``--distributed`` → None (not given), ``{}`` (given without a value or ``auto``: cluster
    auto-detection, e.g. SLURM) or ``{coordinator_address, num_processes, process_id}`` from
    ``HOST:PORT,NUM_PROCESSES,PROCESS_ID``; a ``ValueError`` names the flag and the accepted forms."""
    if value is None or value is False:
        return None
    if value is True or str(value).strip() in ("", "auto"):
        return {}
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) == 3 and ":" in parts[0] and parts[1].isdigit() and parts[2].isdigit():
        n, i = int(parts[1]), int(parts[2])
        if n >= 1 and 0 <= i < n:
            return {"coordinator_address": parts[0], "num_processes": n, "process_id": i}
    raise ValueError(
        "--distributed takes no value (auto-detection: SLURM, Open MPI, …), 'auto', or "
        f"HOST:PORT,NUM_PROCESSES,PROCESS_ID (process id < number of processes), got {value!r}"
    )


def cli_session(devices: str | int | None = None, distributed: str | bool | None = None):
    """Everything the command line does with ``--devices`` / ``--distributed``, BEFORE any JAX work:
    host devices and reproducible compilation (:func:`configure`), ``jax.distributed`` (:func:`initialize`);
    returns the context manager to run the command in (:func:`use_devices`, or a no-op without
    ``--devices``). With ``--distributed`` the devices must be ``all`` (every process's devices)."""
    devices = parse_devices(devices)
    spec = parse_distributed(distributed)
    if spec is not None:
        if devices not in (None, "all"):
            raise ValueError(
                f"--devices must be 'all' with --distributed (the mesh spans every process), got {devices!r}"
            )
        devices = "all"
        configure(devices=None)
        initialize(**spec)
    elif devices is not None:
        configure(devices=devices if isinstance(devices, int) else None)
    return use_devices(devices) if devices is not None else contextlib.nullcontext()


@contextlib.contextmanager
def command_session(
    devices: str | int | None, distributed: str | bool | None, out: str | Path, console: Any = None
) -> Iterator[tuple[Path, Any]]:
    """One experiment command (``es-lottery slt|imp|nets``) with ``--devices`` / ``--distributed``.

    Sets the process up (:func:`cli_session`, so call it before any JAX work) and yields ``(out, console)``
    for THIS process: process 0 gets ``out`` and ``console`` unchanged; every other process of a
    ``--distributed`` run gets a private scratch copy of ``out`` (:func:`process_output_dir`: it reads
    the same finished jobs and checkpoints, so it runs the same computations the collectives need) and a
    console that prints nothing, so that only process 0 writes run directories, the store and logs. The
    scratch copy is removed afterwards; every process waits for the others before returning.
    """
    session = cli_session(devices, distributed)
    multi = distributed is not None and distributed is not False and process_count() > 1
    out = Path(out)
    scratch = None
    if multi and not is_primary():
        import io

        from rich.console import Console

        scratch = process_output_dir(out)
        out, console = scratch, Console(file=io.StringIO())
    if multi:
        barrier("es-lottery-command-copied")  # process 0 writes nothing before every copy is taken
    try:
        with session:
            yield out, console
        if multi:
            barrier("es-lottery-command-done")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
