"""Population kernels: evaluate a whole population of networks in one jitted call.

Two modes
---------
* ``evaluate_masks(module, params, masks, x, y)`` — shared frozen weights, one mask per member (GA /
  strong tickets). ``masks`` has the params' tree structure with a leading population axis on every leaf.
* ``evaluate_params(module, member_params, x, y)`` — one weight set per member (ES). Every leaf of
  ``member_params`` has a leading population axis.

Both return ``{metric: (P,) float32}`` for the requested metrics:

* ``accuracy`` — fraction of ``argmax(output) == y`` (first index wins ties, as ``numpy.argmax``),
  accumulated as integer counts, so chunked and unchunked evaluation agree exactly;
* ``cross_entropy`` — mean softmax cross-entropy against integer labels;
* ``mse`` — mean over data and outputs of ``(output − target)²``; the target is ``one_hot(y)`` for integer
  labels, or ``y`` itself when ``y`` is a float array shaped like the output (regression).

How it is fast
--------------
* The input is shared by all members: the first layer of the whole population is ONE matmul
  ``x (n × in) @ W (in × P·h)`` (for the CNN, one convolution with ``P·8`` output channels), later layers are
  batched matmuls (grouped convolutions for the CNN).
* GA mode with a single hidden layer and a small input (``2**in ≤ 16``, e.g. moons/circles/blobs with 2
  inputs): a hidden unit's pre-activation depends on its mask only through its ``in`` input bits, so every
  hidden unit has just ``2**in`` possible activation columns. They are computed once per data chunk as a
  table ``T (n × 2**in·h)`` and the whole population's logits are ONE matmul ``T @ C`` with
  ``C (2**in·h × P·out)`` built from the masks — exact, with no per-member first layer at all.
* The data axis is processed in chunks with ``lax.scan`` (``chunk_size``), so the ``(P × chunk × hidden)``
  intermediates stay small; the padding of the last chunk is masked out.
* ``shard=True`` splits the population axis over all devices with ``shard_map`` (each device evaluates its
  own members; no communication) after padding the population to a multiple of the device count.

Networks other than ``MLP``/``PaperCNN`` fall back to ``vmap`` over ``module.apply`` (correct, slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from es_lottery import masks as masks_lib
from es_lottery.networks import ACTIVATION_FNS, MLP, PaperCNN

METRICS = ("accuracy", "cross_entropy", "mse")
TABLE_MAX_COMBOS = 16  # use the GA table path when 2**in_features ≤ this
DEFAULT_CHUNK_BYTES = 8 * 2**20  # "auto" chunking: ≈ bytes of the largest (P × chunk × width) intermediate

__all__ = [
    "METRICS",
    "evaluate_masks",
    "evaluate_params",
    "forward_population",
    "make_forward",
    "population_size",
]


# ----------------------------------------------------------------------------------------------
# validation (Python level, before anything is traced)


def _check_metrics(metrics) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError(f"metrics must name at least one of {METRICS}")
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r} in field 'metrics'; allowed: {', '.join(METRICS)}")
    return metrics


def population_size(tree) -> int:
    """The leading (population) axis shared by every leaf; ``ValueError`` if they disagree."""
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree_util.tree_leaves(tree)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"every leaf needs the same leading population axis, got sizes {sorted(map(str, sizes))}"
        )
    return int(sizes.pop())


def _check_data(module: nn.Module, x, y, metrics):
    x_shape = tuple(np.shape(x))
    expect = tuple(getattr(module, "input_shape", x_shape[1:]))
    ok = len(x_shape) >= 2 and (
        x_shape[1:] == expect
        or (isinstance(module, MLP) and int(np.prod(x_shape[1:])) == int(np.prod(expect)))
    )
    if not ok:
        raise ValueError(f"input x must have shape (n, {', '.join(map(str, expect))}), got {x_shape}")
    if np.shape(y)[:1] != x_shape[:1]:
        raise ValueError(f"labels y must have {x_shape[0]} entries (one per input), got shape {np.shape(y)}")
    integer = jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer)
    if ("accuracy" in metrics or "cross_entropy" in metrics) and not (integer and np.ndim(y) == 1):
        raise TypeError("metrics 'accuracy'/'cross_entropy' need integer class labels y of shape (n,)")


def _resolve_chunk(chunk_size, n: int, per_example_bytes: int) -> int:
    if chunk_size is None:
        return n
    if chunk_size == "auto":
        c = max(8, DEFAULT_CHUNK_BYTES // max(per_example_bytes, 1))
        return int(min(n, 1 << int(np.log2(c))))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None, 'auto' or a positive int, got {chunk_size!r}")
    return int(min(chunk_size, n))


# ----------------------------------------------------------------------------------------------
# forward passes of a whole population on one data chunk: outputs (P, c, out)


def _mlp_forward(module: MLP, params):
    """Per-member weights (leading axis P) → ``f(x (c, in)) -> (P, c, out)``."""
    n_layers = len(module.sizes) - 1
    hidden, out_act = ACTIVATION_FNS[module.hidden_activation], ACTIVATION_FNS[module.output_activation]
    w0, b0 = params["dense_0"]["kernel"], params["dense_0"]["bias"]  # (P, in, h), (P, h)
    npop, din, width = w0.shape
    w0s = jnp.transpose(w0, (1, 0, 2)).reshape(din, npop * width)  # stacked: (in, P·h)

    def forward(x):
        x = jnp.reshape(x, (x.shape[0], -1))
        # shared input: one matmul for the first layer of every member
        z = (x @ w0s).reshape(x.shape[0], npop, width)
        z = jnp.transpose(z, (1, 0, 2)) + b0[:, None, :]  # (P, c, h)
        for i in range(1, n_layers):
            w, b = params[f"dense_{i}"]["kernel"], params[f"dense_{i}"]["bias"]
            z = jnp.einsum("pch,pho->pco", hidden(z), w) + b[:, None, :]
        return out_act(z)

    return forward


def _cnn_forward(module: PaperCNN, params):
    """The paper CNN for P members → ``f(x (c, 28, 28, 1)) -> (P, c, classes)``."""
    dn = ("NHWC", "HWIO", "NHWC")
    k0, b0 = params["conv_0"]["kernel"], params["conv_0"]["bias"]  # (P, 5, 5, 1, 8)
    k1, b1 = params["conv_1"]["kernel"], params["conv_1"]["bias"]  # (P, 5, 5, 8, 16)
    w2, b2 = params["dense_0"]["kernel"], params["dense_0"]["bias"]  # (P, 784, 10)
    npop, c1 = k0.shape[0], k1.shape[-1]
    # all members' first convolutions are ONE convolution of the shared input with P·8 output channels
    k0s = jnp.transpose(k0, (1, 2, 3, 0, 4)).reshape(*k0.shape[1:4], npop * k0.shape[-1])
    # the second is a grouped convolution, one group per member
    k1s = jnp.transpose(k1, (1, 2, 3, 0, 4)).reshape(*k1.shape[1:4], npop * c1)

    def forward(x):
        z = jax.lax.conv_general_dilated(x, k0s, (1, 1), "SAME", dimension_numbers=dn)
        z = nn.max_pool(jax.nn.relu(z + b0.reshape(-1)), (2, 2), strides=(2, 2))
        z = jax.lax.conv_general_dilated(
            z, k1s, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=npop
        )
        z = nn.max_pool(jax.nn.relu(z + b1.reshape(-1)), (2, 2), strides=(2, 2))  # (c, 7, 7, P·16)
        c, hh, ww, _ = z.shape
        z = z.reshape(c, hh, ww, npop, c1)
        z = jnp.transpose(z, (3, 0, 1, 2, 4)).reshape(npop, c, hh * ww * c1)  # flax flattens (h, w, ch)
        return jnp.einsum("pcf,pfo->pco", z, w2) + b2[:, None, :]

    return forward


def make_forward(module: nn.Module, member_params):
    """``f(x) -> (P, n, out)``: all members' outputs on a shared batch; leaves of ``member_params``: (P, …).

    Everything that does not depend on the data (stacked kernels) is prepared once, outside ``f``.
    """
    if isinstance(module, MLP):
        return _mlp_forward(module, member_params)
    if isinstance(module, PaperCNN):
        return _cnn_forward(module, member_params)
    return lambda x: jax.vmap(lambda p: module.apply({"params": p}, x))(member_params)


def forward_population(module: nn.Module, member_params, x):
    """Outputs of every member on a shared batch: ``(P, n, out)``."""
    return make_forward(module, member_params)(x)


def _table_path_applies(module: nn.Module) -> bool:
    return isinstance(module, MLP) and len(module.sizes) == 3 and 2 ** module.sizes[0] <= TABLE_MAX_COMBOS


def _ga_table_forward(module: MLP, params, masks):
    """GA mode, one hidden layer, small input: all members' logits as ONE matmul (see the module doc).

    Assumes the non-prunable (bias) masks are all ones, as the mask convention says; ``evaluate_masks``
    falls back to the general path when concrete bias masks are not.
    """
    hidden, out_act = ACTIVATION_FNS[module.hidden_activation], ACTIVATION_FNS[module.output_activation]
    w0, b0 = params["dense_0"]["kernel"], params["dense_0"]["bias"]  # (in, h), (h,)
    w1, b1 = params["dense_1"]["kernel"], params["dense_1"]["bias"]  # (h, o), (o,)
    m0, m1 = masks["dense_0"]["kernel"], masks["dense_1"]["kernel"]  # (P, in, h), (P, h, o)
    din, width = w0.shape
    npop, n_out = m1.shape[0], w1.shape[1]
    n_combo = 2**din
    bits = jnp.asarray((np.arange(n_combo)[:, None] >> np.arange(din)[None, :]) & 1, w0.dtype)  # (K, in)
    # member p's hidden unit j uses activation column code[p, j] = its input bits as a number
    code = jnp.sum(m0.astype(jnp.int32) << jnp.arange(din, dtype=jnp.int32)[None, :, None], axis=1)  # (P, h)
    select = jax.nn.one_hot(code, n_combo, dtype=w0.dtype, axis=1)  # (P, K, h)
    w1m = jnp.where(m1, w1[None], 0.0)  # (P, h, o)
    coef = (select[:, :, :, None] * w1m[:, None, :, :]).reshape(npop, n_combo * width, n_out)
    coef = jnp.transpose(coef, (1, 0, 2)).reshape(n_combo * width, npop * n_out)  # (K·h, P·o)

    def forward(x):
        x = jnp.reshape(x, (x.shape[0], -1))
        table = hidden(jnp.einsum("ci,ki,ih->ckh", x, bits, w0) + b0)  # (c, K, h)
        logits = table.reshape(x.shape[0], n_combo * width) @ coef  # (c, P·o): the whole population
        logits = jnp.transpose(logits.reshape(x.shape[0], npop, n_out), (1, 0, 2)) + b1
        return out_act(logits)

    return forward


# ----------------------------------------------------------------------------------------------
# metric accumulation over chunks


def _chunk_sums(out, y, valid, metrics):
    """Per-member sums over one chunk: dict metric → (P,) (int32 for accuracy, float32 otherwise)."""
    sums = {}
    if "accuracy" in metrics:
        hit = (jnp.argmax(out, axis=-1) == y[None, :]) & valid[None, :]
        sums["accuracy"] = jnp.sum(hit, axis=1, dtype=jnp.int32)
    if "cross_entropy" in metrics:
        logz = jax.nn.logsumexp(out, axis=-1)
        picked = jnp.take_along_axis(out, jnp.broadcast_to(y[None, :, None], (*out.shape[:2], 1)), -1)[
            ..., 0
        ]
        sums["cross_entropy"] = jnp.sum(jnp.where(valid[None, :], logz - picked, 0.0), axis=1)
    if "mse" in metrics:
        if jnp.issubdtype(y.dtype, jnp.integer):
            target = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
        else:
            target = jnp.reshape(y, (y.shape[0], -1)).astype(out.dtype)
        err = jnp.mean((out - target[None]) ** 2, axis=-1)
        sums["mse"] = jnp.sum(jnp.where(valid[None, :], err, 0.0), axis=1)
    return sums


def _scan_chunks(forward, x, y, metrics, chunk):
    """Run ``forward(x_chunk) -> (P, c, out)`` over the data in chunks; return mean metrics (P,)."""
    n = x.shape[0]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    valid = jnp.arange(n_chunks * chunk) < n
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    yp = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1))
    xs = xp.reshape((n_chunks, chunk, *x.shape[1:]))
    ys = yp.reshape((n_chunks, chunk, *y.shape[1:]))
    vs = valid.reshape(n_chunks, chunk)

    if n_chunks == 1:
        totals = _chunk_sums(forward(xs[0]), ys[0], vs[0], metrics)
    else:

        def body(carry, inp):
            xc, yc, vc = inp
            sums = _chunk_sums(forward(xc), yc, vc, metrics)
            return jax.tree_util.tree_map(jnp.add, carry, sums), None

        first = jax.eval_shape(lambda: _chunk_sums(forward(xs[0]), ys[0], vs[0], metrics))
        init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), first)
        totals, _ = jax.lax.scan(body, init, (xs, ys, vs))
    return {k: (v.astype(jnp.float32) / n) for k, v in totals.items()}


@partial(jax.jit, static_argnames=("module", "metrics", "chunk", "use_table"))
def eval_masks_jit(module, params, masks, x, y, metrics, chunk, use_table):
    """Jitted core of ``evaluate_masks`` (no validation): callable inside other jitted code."""
    if use_table:
        forward = _ga_table_forward(module, params, masks)
    else:
        member = jax.tree_util.tree_map(
            lambda w, m: jnp.where(m, w[None], jnp.zeros((), w.dtype)), params, masks
        )
        forward = make_forward(module, member)
    return _scan_chunks(forward, x, y, metrics, chunk)


@partial(jax.jit, static_argnames=("module", "metrics", "chunk"))
def eval_params_jit(module, member_params, x, y, metrics, chunk):
    """Jitted core of ``evaluate_params`` (no validation): callable inside other jitted code."""
    return _scan_chunks(make_forward(module, member_params), x, y, metrics, chunk)


# ----------------------------------------------------------------------------------------------
# sharding the population axis


def _pop_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("pop",))


def _pad_population(tree, npop: int, multiple: int):
    pad = (-npop) % multiple
    if pad == 0:
        return tree
    # repeat the first member as padding (any valid member works; its results are dropped)
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), tree)


def _sharded(fn, pop_tree, shared, npop):
    """Evaluate ``fn(pop_tree, *shared)`` with ``pop_tree``'s leading axis split over all devices."""
    mesh = _pop_mesh()
    ndev = mesh.devices.size
    padded = _pad_population(pop_tree, npop, ndev)
    pop_spec = jax.tree_util.tree_map(lambda _: P("pop"), padded)
    shared_spec = jax.tree_util.tree_map(lambda _: P(), shared)
    padded = jax.device_put(padded, jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), pop_spec))
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(pop_spec, *shared_spec), out_specs=P("pop"))
    out = jax.jit(mapped)(padded, *shared)
    return jax.tree_util.tree_map(lambda a: a[:npop], out)


# ----------------------------------------------------------------------------------------------
# public API


def evaluate_masks(
    module: nn.Module,
    params,
    masks,
    x,
    y,
    metrics: Sequence[str] | str = ("accuracy",),
    chunk_size: int | str | None = "auto",
    shard: bool = False,
    use_table: bool | None = None,
) -> dict[str, jax.Array]:
    """Evaluate P masks over shared frozen ``params`` on ``(x, y)``: ``{metric: (P,)}``.

    ``chunk_size``: None (all data at once), ``"auto"`` (bounded intermediates) or an int.
    ``use_table``: force (True) or disable (False) the single-hidden-layer table path; None = automatic.
    """
    metrics = _check_metrics(metrics)
    npop = population_size(masks)
    one = jax.tree_util.tree_map(lambda m: m[0], masks)
    masks_lib.check_congruent(params, one, field="masks")
    _check_data(module, x, y, metrics)
    if use_table is None:
        use_table = _table_path_applies(module) and _biases_unmasked(params, masks)
    elif use_table and not _table_path_applies(module):
        raise ValueError("use_table=True needs an MLP with one hidden layer and 2**in_features ≤ 16 inputs")
    masks = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), masks)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    widest = max(np.shape(w)[-1] for w in jax.tree_util.tree_leaves(params))
    if use_table:
        widest = widest * 2 ** module.sizes[0]
    chunk = _resolve_chunk(chunk_size, x.shape[0], _per_example_bytes(module, npop, widest))
    fn = partial(eval_masks_jit, module, metrics=metrics, chunk=chunk, use_table=bool(use_table))
    if shard and jax.device_count() > 1:
        return _sharded(lambda m, p, xx, yy: fn(p, m, xx, yy), masks, (params, x, y), npop)
    return fn(params, masks, x, y)


def evaluate_params(
    module: nn.Module,
    member_params,
    x,
    y,
    metrics: Sequence[str] | str = ("accuracy",),
    chunk_size: int | str | None = "auto",
    shard: bool = False,
) -> dict[str, jax.Array]:
    """Evaluate P weight sets (leading axis P on every leaf) on ``(x, y)``: ``{metric: (P,)}``."""
    metrics = _check_metrics(metrics)
    npop = population_size(member_params)
    _check_data(module, x, y, metrics)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    widest = max(np.shape(w)[-1] for w in jax.tree_util.tree_leaves(member_params))
    chunk = _resolve_chunk(chunk_size, x.shape[0], _per_example_bytes(module, npop, widest))
    fn = partial(eval_params_jit, module, metrics=metrics, chunk=chunk)
    if shard and jax.device_count() > 1:
        return _sharded(fn, member_params, (x, y), npop)
    return fn(member_params, x, y)


def _biases_unmasked(params, masks) -> bool:
    """True unless concrete masks prune a non-prunable leaf (the table path assumes they do not)."""
    flags = jax.tree_util.tree_leaves(masks_lib.prunable_flags(params))
    try:
        return all(
            bool(jnp.all(m)) for m, f in zip(jax.tree_util.tree_leaves(masks), flags, strict=True) if not f
        )
    except jax.errors.ConcretizationTypeError:
        return True


def _per_example_bytes(module: nn.Module, npop: int, widest: int) -> int:
    if isinstance(module, PaperCNN):
        return 4 * npop * 28 * 28 * 8  # the first conv's output dominates
    return 4 * npop * widest
