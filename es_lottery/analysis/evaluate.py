"""Evaluators: how the analysis functions turn a population of weight sets into metrics.

An **evaluator** is any function ``evaluate(member_params) -> {metric: (P,)}`` where every leaf of
``member_params`` has a leading population axis P. The analysis functions (interpolation paths, loss
projections) never evaluate networks one by one: they build ALL the points they need as one population and
hand it to an evaluator — in blocks of members when the population's weights would not fit in memory.

* :func:`classification_evaluator` — the population kernels (``population.evaluate_params``) on a fixed
  labelled set: accuracy, cross-entropy, MSE (a :class:`ClassificationEvaluator`).
* :func:`task_evaluator` — any task of the task protocol (``tasks.base``): ``task.evaluate_members(state,
  members)``, e.g. control tasks.
* any other function with the same signature (a user's own metric).

Blocks. :func:`evaluate_generated` is the block driver: ``build(inputs_block, *args) -> member_params``
makes the members of one block from per-member inputs (interpolation coefficients, grid coordinates),
jitted, so only one block of weight sets exists at a time. Every block has the same size (the last one is
padded by repeating its final row; padded results are dropped), so the builder and the evaluator compile
once. Blocks are dispatched without host syncs in between. ``block_size="auto"`` keeps one block's member
weights under ``MEMBER_BLOCK_BYTES`` (256 MiB: a 51 × 51 grid of an 11k-parameter CNN or MLP is one block;
LeNet-300-100 runs ≈ 250 members per block).

Affine populations (:func:`evaluate_affine`). Loss projections evaluate members ``θ + Σ_k c_ik·d_k`` (K = 1
or 2 directions). For an MLP the first layer is then affine in the coefficients: ``x·(W + Σ c_k D_k) + (b +
Σ c_k e_k) = (xW + b) + Σ c_k (x D_k + e_k)``. So :meth:`ClassificationEvaluator.affine` computes the K + 1
first-layer products ONCE for all the data (one GEMM ``[W, D_1, …, D_K]ᵀ ((K+1)·h × in) @ xᵀ``, shared by
every member) and forms each member's pre-activations by K broadcast multiply-adds; the later layers run per
member in the data-minor ``(P, width, c)`` layout of the population kernel (an unrolled FMA chain for a
small output layer), and the metrics walk the few classes elementwise (running max / first argmax / Σ exp;
the whole 51 × 51 MLP grid ran 3–4× faster than with ``argmax`` / ``logsumexp`` over the middle axis).
Members run in blocks (``lax.map``) over data chunks (``lax.scan``) sized so that a block's intermediates
stay in cache (``AFFINE_BLOCK_BYTES``; measured for the MLP 784-16-10: 256 members × 512 images ran at ≈ 33
ns per member-image, all 2601 grid points × 512 images at ≈ 110 ns). For that MLP this removes ≈ 98 % of the
FLOPs of a 51 × 51 grid (benchmarks/landscape.py). The result equals the population kernel on the built
members up to float32 rounding (sums in another order; a coefficient row of zeros gives exactly the centre's
first-layer pre-activations). Other modules (the paper CNN: pooling follows its first convolution, and the
second convolution holds 80 % of the FLOPs) and other evaluators take the plain population path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from es_lottery import masks as masks_lib
from es_lottery import population
from es_lottery.networks import ACTIVATION_FNS, MLP

PyTree = Any
Evaluator = Callable[[PyTree], Mapping[str, Any]]

MEMBER_BLOCK_BYTES = 256 * 2**20
AFFINE_CHUNK = 512  # affine path, "auto": images per data chunk …
AFFINE_BLOCK_BYTES = 8 * 2**20  # … and members per block so that (block, widest, chunk) floats ≈ this
UNROLL_CLASSES = 32  # metrics walk the class axis elementwise up to this many classes
UNROLL_MAX = 256  # output layers with out·in ≤ this: an unrolled FMA chain (as in the population kernel)

__all__ = [
    "MEMBER_BLOCK_BYTES",
    "ClassificationEvaluator",
    "Evaluator",
    "affine_members",
    "classification_evaluator",
    "evaluate_affine",
    "evaluate_generated",
    "resolve_block_size",
    "task_evaluator",
]


# ----------------------------------------------------------------------------------------------
# member construction and the block driver


def affine_members(center: PyTree, directions: Sequence[PyTree], coeffs) -> PyTree:
    """Member params ``center + Σ_k coeffs[i, k] · directions[k]``: leaves ``(N, …)`` for ``coeffs (N, K)``.

    Jitted (and jittable inside other code); summed in the order k = 1, 2, …; a row of zeros gives exactly
    ``center``.
    """
    return _affine_members_jit(center, list(directions), jnp.asarray(coeffs))


def _affine_members(center: PyTree, directions: Sequence[PyTree], coeffs) -> PyTree:

    def leaf(c, *ds):
        c = jnp.asarray(c)
        out = jnp.broadcast_to(c, (coeffs.shape[0], *c.shape))
        for k, d in enumerate(ds):
            w = coeffs[:, k].astype(c.dtype).reshape((-1,) + (1,) * c.ndim)
            out = out + w * jnp.asarray(d, c.dtype)[None]
        return out

    return jax.tree_util.tree_map(leaf, center, *directions)


_affine_members_jit = jax.jit(_affine_members)


def _affine_rows(coeffs, center, directions):
    return _affine_members(center, directions, coeffs)


def _tree_bytes(shapes: PyTree, skip_leading: bool = True) -> int:
    return int(
        sum(
            np.prod(s.shape[1:] if skip_leading else s.shape, dtype=np.int64) * s.dtype.itemsize
            for s in jax.tree_util.tree_leaves(shapes)
        )
    )


def resolve_block_size(block_size: int | str | None, n: int, member_bytes: int) -> int:
    """Members per block: ``None`` = all ``n``; ``"auto"`` = as many as fit in ``MEMBER_BLOCK_BYTES``."""
    if block_size is None:
        return n
    if block_size == "auto":
        return int(max(1, min(n, MEMBER_BLOCK_BYTES // max(member_bytes, 1))))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be None, 'auto' or a positive int, got {block_size!r}")
    return int(min(block_size, n))


def _rows(inputs: PyTree) -> int:
    leaves = jax.tree_util.tree_leaves(inputs)
    if not leaves:
        raise ValueError("inputs must hold at least one array with a leading member axis")
    n = int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else 0
    if n == 0 or any(np.ndim(a) == 0 or np.shape(a)[0] != n for a in leaves):
        shapes = [np.shape(a) for a in leaves]
        raise ValueError(f"every input needs the same non-empty leading axis, got {shapes}")
    return n


def _run_blocks(fn: Callable, inputs: PyTree, n: int, block: int) -> dict[str, np.ndarray]:
    """``fn(rows)`` for equal-size blocks of ``inputs`` (last one padded); results concatenated, trimmed."""
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
    if pad:
        inputs = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), inputs
        )
    outs = []
    for b in range(n_blocks):  # a few blocks at most; each one is a whole population
        rows = jax.tree_util.tree_map(lambda a, b=b: a[b * block : (b + 1) * block], inputs)
        result = fn(rows)
        if not isinstance(result, Mapping):
            raise TypeError(f"the evaluator must return a mapping metric → (P,), got {type(result).__name__}")
        outs.append(dict(result))
    outs = jax.device_get(outs)
    merged = {}
    for k in outs[0]:
        parts = [np.asarray(o[k]) for o in outs]
        if any(np.shape(p)[:1] != (block,) for p in parts):
            raise ValueError(
                f"the evaluator returned metric {k!r} with shape {np.shape(parts[0])} for a block of {block} "
                "members; it must return one value per member"
            )
        merged[k] = np.concatenate(parts)[:n]
    return merged


@lru_cache(maxsize=64)
def _jitted(build: Callable) -> Callable:
    """One jitted wrapper per build function: calls with new arrays of the same shapes reuse its compile."""
    return jax.jit(build)


def evaluate_generated(
    evaluate: Evaluator,
    build: Callable[..., PyTree],
    inputs: PyTree,
    block_size: int | str | None = "auto",
    args: tuple = (),
) -> dict[str, np.ndarray]:
    """Evaluate the members ``build(inputs, *args)`` in blocks: ``{metric: (N,)}`` as NumPy arrays.

    ``inputs``: a pytree of arrays with a leading axis N (one row per member); ``build(rows, *args)`` maps a
    block of rows to member params (leading axis = the block's rows) and is jitted here. Pass the arrays it
    needs (centre, directions) in ``args``, not in a closure: then they are arguments of the compiled
    program, not constants baked into it, and a module-level ``build`` compiles once per shape.
    """
    n = _rows(inputs)
    inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
    args = jax.tree_util.tree_map(jnp.asarray, tuple(args))
    one = jax.tree_util.tree_map(lambda a: a[:1], inputs)
    block = resolve_block_size(block_size, n, _tree_bytes(jax.eval_shape(build, one, *args)))
    try:
        build_jit = _jitted(build)
    except TypeError:  # an unhashable callable
        build_jit = jax.jit(build)
    return _run_blocks(lambda rows: evaluate(build_jit(rows, *args)), inputs, n, block)


def evaluate_affine(
    evaluate: Evaluator,
    center: PyTree,
    directions: Sequence[PyTree],
    coeffs,
    block_size: int | str | None = "auto",
    fast: bool = True,
) -> dict[str, np.ndarray]:
    """Evaluate the members ``center + Σ_k coeffs[i, k]·directions[k]`` (``coeffs (N, K)``): ``{m: (N,)}``.

    With ``fast`` and an evaluator that offers it (:meth:`ClassificationEvaluator.affine`, MLPs) the shared
    first layer is computed once per data chunk (module doc); otherwise the members are built in blocks
    and evaluated as populations (:func:`evaluate_generated`).
    """
    coeffs = np.asarray(coeffs, np.float32)
    if coeffs.ndim != 2 or coeffs.shape[1] != len(directions) or coeffs.shape[0] == 0:
        raise ValueError(
            f"coeffs must be (N, K) with K = {len(directions)} directions and N ≥ 1, got {coeffs.shape}"
        )
    for k, d in enumerate(directions):
        masks_lib.check_congruent(center, d, field=f"direction {k + 1}")
    center = jax.tree_util.tree_map(jnp.asarray, center)
    directions = [jax.tree_util.tree_map(jnp.asarray, d) for d in directions]
    if fast and getattr(evaluate, "supports_affine", False):
        return evaluate.affine(center, directions, coeffs, block_size)
    return evaluate_generated(evaluate, _affine_rows, coeffs, block_size, (center, list(directions)))


# ----------------------------------------------------------------------------------------------
# classification


def _metric_sums(out, y, valid, metrics):
    """Per-member sums over one chunk of outputs ``(P, out, c)``; accuracy as int32 hit counts.

    With few classes (≤ ``UNROLL_CLASSES``) the class axis is walked once, elementwise over (P, c): the
    running maximum and its first index (``argmax``'s tie rule), then ``Σ exp(out_k − max)`` and the label's
    logit — one fused loop instead of several reductions over the middle axis.
    """
    sums = {}
    n_cls = out.shape[1]
    if ("accuracy" in metrics or "cross_entropy" in metrics) and n_cls <= UNROLL_CLASSES:
        best, idx = out[:, 0], jnp.zeros(out[:, 0].shape, jnp.int32)
        for k in range(1, n_cls):
            better = out[:, k] > best  # strict: the first maximum wins, as argmax
            idx, best = jnp.where(better, k, idx), jnp.where(better, out[:, k], best)
        if "accuracy" in metrics:
            sums["accuracy"] = jnp.sum((idx == y[None, :]) & valid[None, :], axis=1, dtype=jnp.int32)
        if "cross_entropy" in metrics:
            total, picked = jnp.zeros_like(best), jnp.zeros_like(best)
            for k in range(n_cls):
                total = total + jnp.exp(out[:, k] - best)
                picked = jnp.where(y[None, :] == k, out[:, k], picked)
            ce = best + jnp.log(total) - picked
            sums["cross_entropy"] = jnp.sum(jnp.where(valid[None, :], ce, 0.0), axis=1)
    else:
        if "accuracy" in metrics:
            hit = (jnp.argmax(out, axis=1) == y[None, :]) & valid[None, :]
            sums["accuracy"] = jnp.sum(hit, axis=1, dtype=jnp.int32)
        if "cross_entropy" in metrics:
            logz = jax.nn.logsumexp(out, axis=1)
            idx = jnp.broadcast_to(y[None, None, :], (out.shape[0], 1, out.shape[2]))
            picked = jnp.take_along_axis(out, idx, 1)[:, 0]
            sums["cross_entropy"] = jnp.sum(jnp.where(valid[None, :], logz - picked, 0.0), axis=1)
    if "mse" in metrics:
        if jnp.issubdtype(y.dtype, jnp.integer):
            target = jax.nn.one_hot(y, n_cls, dtype=out.dtype, axis=0)  # (out, c)
        else:
            target = jnp.reshape(y, (y.shape[0], -1)).astype(out.dtype).T
        err = jnp.mean((out - target[None]) ** 2, axis=1)
        sums["mse"] = jnp.sum(jnp.where(valid[None, :], err, 0.0), axis=1)
    return sums


@partial(jax.jit, static_argnames=("module", "metrics", "chunk", "block"))
def _affine_mlp_jit(module, center, directions, coeffs, x, y, metrics, chunk, block):
    """Metric sums / n of the members ``center + Σ coeffs[:, k]·directions[k]`` of an MLP (module doc).

    ``coeffs (blocks·block, K)``. The first-layer products of ALL data are computed once
    (``(K+1, h, n)``, shared by every member); members then run in blocks (``lax.map``) over data chunks
    (``lax.scan``), so a block's intermediates ``(block, width, chunk)`` stay in cache.
    """
    n_layers = len(module.sizes) - 1
    hidden, out_act = ACTIVATION_FNS[module.hidden_activation], ACTIVATION_FNS[module.output_activation]
    n_dir = coeffs.shape[1]
    w0 = center["dense_0"]["kernel"]  # (in, h)
    width = w0.shape[1]
    stack_w = jnp.concatenate([w0[None]] + [d["dense_0"]["kernel"][None] for d in directions])  # (K+1, in, h)
    stack_b = jnp.concatenate(
        [center["dense_0"]["bias"][None]] + [d["dense_0"]["bias"][None] for d in directions]
    )
    n = x.shape[0]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    xf = jnp.reshape(x, (n, -1))
    rows_w = jnp.transpose(stack_w, (0, 2, 1)).reshape((n_dir + 1) * width, -1)  # ((K+1)·h, in)
    shared = (rows_w @ xf.T).reshape(n_dir + 1, width, n) + stack_b[:, :, None]  # (K+1, h, n): once
    shared = jnp.pad(shared, [(0, 0), (0, 0), (0, pad)])
    shared = jnp.transpose(
        shared.reshape(n_dir + 1, width, n_chunks, chunk), (2, 0, 1, 3)
    )  # (chunks, K+1, h, c)
    ys = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)).reshape((n_chunks, chunk, *y.shape[1:]))
    vs = (jnp.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk)
    later = {f"dense_{i}": center[f"dense_{i}"] for i in range(1, n_layers)}
    later_dirs = [{k: d[k] for k in later} for d in directions]

    def block_sums(cb):  # (block, K) → metric sums of the block's members
        members = affine_members(later, later_dirs, cb) if later else {}
        layers = [
            (jnp.transpose(members[f"dense_{i}"]["kernel"], (0, 2, 1)), members[f"dense_{i}"]["bias"])
            for i in range(1, n_layers)
        ]

        def forward(sc):  # (K+1, h, c) → (block, out, c)
            z = jnp.broadcast_to(sc[0][None], (cb.shape[0], *sc.shape[1:]))
            for k in range(n_dir):
                z = z + cb[:, k, None, None] * sc[k + 1][None]
            b = jnp.zeros((cb.shape[0], width), z.dtype)  # the first bias is already in z
            for i, (wt, b_next) in enumerate(layers):
                unrolled = i == len(layers) - 1 and wt.shape[1] * wt.shape[2] <= UNROLL_MAX
                z, b = population._dense_dm(wt, z, b, hidden, unrolled), b_next
            return out_act(z + b[:, :, None])

        def body(carry, inp):
            sc, yc, vc = inp
            return jax.tree_util.tree_map(jnp.add, carry, _metric_sums(forward(sc), yc, vc, metrics)), None

        first = jax.eval_shape(lambda: _metric_sums(forward(shared[0]), ys[0], vs[0], metrics))
        init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), first)
        totals, _ = jax.lax.scan(body, init, (shared, ys, vs))
        return totals

    sums = jax.lax.map(block_sums, coeffs.reshape(-1, block, n_dir))
    return {k: v.reshape(-1).astype(jnp.float32) / n for k, v in sums.items()}


@dataclass(frozen=True, eq=False)
class ClassificationEvaluator:
    """``evaluate(member_params) -> {metric: (P,)}`` with the population kernels on ``(x, y)``; for MLPs
    also :meth:`affine`, the shared-first-layer path for ``center + Σ c_k·d_k`` populations."""

    module: nn.Module
    x: jax.Array
    y: jax.Array
    metrics: tuple[str, ...]
    chunk_size: int | str | None = "auto"
    shard: bool = False

    def __call__(self, member_params: PyTree) -> dict[str, jax.Array]:
        return population.evaluate_params(
            self.module, member_params, self.x, self.y, self.metrics, self.chunk_size, self.shard
        )

    @property
    def supports_affine(self) -> bool:
        return isinstance(self.module, MLP)

    def _affine_plan(self, npop: int, block_size) -> tuple[int, int]:
        """(members per block, data chunk) of the affine path: ``block · chunk · widest`` floats ≈
        ``AFFINE_BLOCK_BYTES`` (measured: 256 members × 512 images of the MLP 784-16-10 ran at ≈ 33 ns per
        member-image, the whole 51 × 51 grid × 512 images at ≈ 110: intermediates out of cache)."""
        n = int(self.x.shape[0])
        chunk = (
            n
            if self.chunk_size is None
            else (min(AFFINE_CHUNK, n) if self.chunk_size == "auto" else int(min(int(self.chunk_size), n)))
        )
        if block_size is None:
            return npop, chunk
        if block_size == "auto":
            sizes = self.module.sizes
            widest = max(int(s) for s in sizes[1:])
            later = sum(
                int(sizes[i]) * int(sizes[i + 1]) + int(sizes[i + 1]) for i in range(1, len(sizes) - 1)
            )
            block = AFFINE_BLOCK_BYTES // (4 * chunk * widest)
            block = min(block, MEMBER_BLOCK_BYTES // max(4 * later, 1))
            return int(max(1, min(npop, block))), chunk
        return resolve_block_size(block_size, npop, 0), chunk

    def affine(
        self, center: PyTree, directions: Sequence[PyTree], coeffs, block_size: int | str | None = "auto"
    ) -> dict[str, np.ndarray]:
        """Metrics of ``center + Σ_k coeffs[i, k]·directions[k]`` (MLP only; see the module doc).

        ``block_size``: members per block (``"auto"``: intermediates of about ``AFFINE_BLOCK_BYTES``).
        """
        if not self.supports_affine:
            raise TypeError(f"the affine path needs an MLP, not {type(self.module).__name__}")
        coeffs = jnp.asarray(coeffs, jnp.float32)
        npop = _rows(coeffs)
        block, chunk = self._affine_plan(npop, block_size)
        pad = (-npop) % block
        if pad:
            coeffs = jnp.concatenate([coeffs, jnp.repeat(coeffs[-1:], pad, axis=0)])
        out = _affine_mlp_jit(
            self.module, center, list(directions), coeffs, self.x, self.y, self.metrics, chunk, block
        )
        return {k: np.asarray(v)[:npop] for k, v in jax.device_get(out).items()}


def classification_evaluator(
    module: nn.Module,
    x,
    y,
    metrics: Sequence[str] | str = ("accuracy", "cross_entropy"),
    chunk_size: int | str | None = "auto",
    shard: bool = False,
) -> ClassificationEvaluator:
    """An evaluator over the labelled set ``(x, y)`` with the population kernels.

    The data is converted (float32 inputs, device arrays) and checked once, here; ``metrics`` are any of
    ``population.METRICS``. ``chunk_size`` / ``shard`` as in ``population.evaluate_params`` (the affine MLP
    path chunks the data by its own "auto" rule and does not shard).
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    bad = [m for m in metrics if m not in population.METRICS]
    if not metrics or bad:
        raise ValueError(
            f"unknown metric(s) {bad} in field 'metrics'; allowed: {', '.join(population.METRICS)}"
        )
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y)
    if x.ndim < 2 or np.shape(y)[:1] != x.shape[:1]:
        raise ValueError(f"x must be (n, …) and y hold n entries, got x {x.shape} and y {np.shape(y)}")
    return ClassificationEvaluator(module, x, y, metrics, chunk_size, shard)


def task_evaluator(task: Any, state: PyTree = None) -> Evaluator:
    """``evaluate(member_params) -> task.evaluate_members(state, member_params)`` (the task protocol)."""
    if not callable(getattr(task, "evaluate_members", None)):
        raise TypeError(
            f"task must follow the task protocol (es_lottery.tasks.base) and have evaluate_members; "
            f"{type(task).__name__} does not"
        )
    return lambda member_params: task.evaluate_members(state, member_params)
