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

How it is fast (measured on the 2-core Xeon CI machine; benchmarks/population_eval.py)
--------------------------------------------------------------------------------------
* **Data-minor layout.** MLP activations are kept as ``(P, width, chunk)`` — the data axis contiguous.
  Hidden layers are batched matmuls ``W_pᵀ (out × in) @ A_p (in × chunk)``, which XLA:CPU runs 1.5–2×
  faster than the ``(P, chunk, width)`` layout, and all elementwise work (bias, activation, argmax, the
  metric sums) is vectorised along the data. A first layer with ≤ 4 inputs is written as broadcast FMAs
  (a GEMM with K = 2 ran 3× slower); an output layer with out·in ≤ 256 as an unrolled FMA chain fused with
  the previous bias + activation (2.5–3× faster than a reduction or a batched GEMM with N = 2). The shared
  input makes a general first layer ONE GEMM ``W (P·h × in) @ xᵀ (in × chunk)``.
* **GA table path** (``table_path_applies``): with few inputs a first-layer unit's activation depends on
  its mask only through its input bits, so each unit has ``2**in`` possible activation columns. Combo 0
  (no input kept) is the constant ``act(b₀)`` and is folded into the next layer's bias; the other columns
  form a table ``T ((2**in − 1)·h × chunk)`` shared by all members, and the next layer of the WHOLE
  population is ONE GEMM ``C (P·out × (2**in − 1)·h) @ T``. Rows are unit-major, so a member's non-zero
  terms are summed in the order of its plain dot product. One hidden layer: up to ``2**in ≤ 16``. Deeper
  nets: only with 2 inputs — the GEMM then executes 3× the FLOPs of layer 2 but still ran ≈ 20 % faster
  than P separate (50 × 50) GEMMs for D = [2, 50, 50, 2] (415 vs 505 ms; the old (P, chunk, h) layout
  took 760 ms).
* **Margins.** For ``metrics == ("accuracy",)``, 2 outputs and a linear output layer only
  ``logit₁ − logit₀`` is computed (class 1 iff > 0, as argmax picks the first index on ties): half the
  output layer — for A–C half the table GEMM.
  Moons, P = 153, 50k points: A 24 → 9 ms, B 59 → 21 ms, C 77 → 27 ms, D 760 → 430 ms.
* **Chunking.** The data axis runs in chunks under ``lax.scan``; integer hit counts make chunking exact.
  ``chunk_size="auto"`` takes the power of two nearest below ``DEFAULT_CHUNK_BYTES`` (4 MiB ≈ the L2 of
  both cores) over the per-example intermediate bytes (``_per_example_bytes``: the table + logits for the
  table path, ``P·width`` floats otherwise), clamped to [64, 8192]. Sweeps: the table path is flat from
  1024 to 8192 (smaller chunks lose to per-step overhead: 64 was 1.4–2.2× slower); D is best at 64–512,
  and 4096 was 1.3–2× slower (the (P·h × chunk) block spills out of cache).
* **CNN.** The grouped convolution (``feature_group_count = P``) of the first version ran at ≈ 10 GFLOP/s
  on XLA:CPU. Now members run in blocks (≈ 512 member-images per step): a block's first convolutions are
  ONE convolution of the shared input with ``block·8`` output channels, and the second convolution (80 %
  of the FLOPs) runs per member (``lax.map``) as a plain convolution over the chunk's images (≈ 100–130
  GFLOP/s). "auto" = 128 images per chunk, 4 members per block. Max-pooling comes before bias + ReLU
  (exact: both are monotone), written as reshapes + maxima of contiguous halves (``reduce_window`` and
  strided slices were 2–3× slower). Paper shape (P = 128, batch 1024): 16 s → 2.2 s in the quietest
  measurement, 3.4–3.8 s while another process holds one core. Tried and slower: im2col / dx-im2col as
  batched GEMMs (the patches are 5–25× the activations and stream through memory), conv1 as a 4-phase
  GEMM with the pooling max fused (XLA hands it to a YNNPACK fusion running at ≈ 11 GFLOP/s), pooling +
  dense batched per block instead of per member (≈ 10 % slower).
* **Hoisting.** Everything that does not depend on the data (masked weights, table coefficients, the
  restacked CNN kernels) is built outside the ``lax.scan`` body; the compiled HLO shows it in the entry
  computation, not in the while loop.
* **Exactness.** Accuracy counts equal the plain per-member loop except where a point's two logits agree
  to within float32 rounding: the kernels sum in a different order (one GEMM instead of a per-member
  dot), so such a tie can fall either way (seen once in 7.65 M point-evaluations, where the float64 logits
  were equal to 8 digits). Cross-entropy / MSE agree to float32 rounding.
* **One thread.** XLA:CPU ran all these loop bodies on one thread (process CPU time / wall ≈ 1.0); it
  only splits much larger GEMMs over the cores. To use several cores, split the population:
  ``shard=True`` with host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
* ``shard=True`` splits the population axis over all devices with ``shard_map`` (each device evaluates its
  own members; no communication) after padding the population to a multiple of the device count. The
  jitted ``shard_map`` is cached per static configuration (it used to be re-wrapped, i.e. recompiled, on
  every call: 370 ms instead of 25 ms for A).

Networks other than ``MLP``/``PaperCNN`` fall back to ``vmap`` over ``module.apply`` (correct, slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery.networks import ACTIVATION_FNS, MLP, PaperCNN

METRICS = ("accuracy", "cross_entropy", "mse")
TABLE_MAX_COMBOS = 16  # GA table path, one hidden layer: when 2**in_features ≤ this
TABLE_DEEP_MAX_COMBOS = 3  # GA table path, ≥ 2 hidden layers: when 2**in_features − 1 ≤ this
SMALL_INPUT = 4  # first layers with ≤ this many inputs are broadcast products, not a GEMM with tiny K
UNROLL_MAX = 256  # output layers with out·in ≤ this are an unrolled FMA chain instead of a batched GEMM
DEFAULT_CHUNK_BYTES = 4 * 2**20  # "auto" chunking: ≈ bytes of the per-chunk intermediates (≈ L2/L3 size)
MIN_AUTO_CHUNK, MAX_AUTO_CHUNK = 64, 8192
CNN_BLOCK_MEMBER_IMAGES = 512  # CNN: members per block × images per chunk

__all__ = [
    "METRICS",
    "check_data",
    "evaluate_masks",
    "evaluate_params",
    "forward_population",
    "make_forward",
    "member_block_multiple",
    "plan_chunk",
    "population_size",
    "table_path_applies",
    "widest_layer",
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
    size = int(sizes.pop())
    if size < 1:
        raise ValueError("the population is empty (leading axis 0); pass at least one member")
    return size


def check_data(module: nn.Module, x, y, metrics=("accuracy",)) -> None:
    """``ValueError``/``TypeError`` unless ``(x, y)`` fit ``module`` and ``metrics`` (checked on the host)."""
    metrics = _check_metrics(metrics)
    x_shape = tuple(np.shape(x))
    expect = tuple(getattr(module, "input_shape", x_shape[1:]))
    ok = len(x_shape) >= 2 and (
        x_shape[1:] == expect
        or (isinstance(module, MLP) and int(np.prod(x_shape[1:])) == int(np.prod(expect)))
    )
    if not ok:
        raise ValueError(f"input x must have shape (n, {', '.join(map(str, expect))}), got {x_shape}")
    if x_shape[0] < 1:
        raise ValueError("the data are empty (x has 0 examples); pass at least one example")
    if np.shape(y)[:1] != x_shape[:1]:
        raise ValueError(f"labels y must have {x_shape[0]} entries (one per input), got shape {np.shape(y)}")
    integer = jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer)
    if ("accuracy" in metrics or "cross_entropy" in metrics) and not (integer and np.ndim(y) == 1):
        raise TypeError("metrics 'accuracy'/'cross_entropy' need integer class labels y of shape (n,)")
    class_metrics = "accuracy" in metrics or "cross_entropy" in metrics
    if class_metrics and not isinstance(y, jax.core.Tracer):  # labels under a trace cannot be read here
        n_out = num_outputs(module, x_shape[1:])
        lo, hi = int(np.min(y)), int(np.max(y))
        if lo < 0 or hi >= n_out:
            raise ValueError(
                f"labels y lie in [{lo}, {hi}], but the network's {n_out} output(s) allow the classes "
                f"0 … {n_out - 1}"
            )


def num_outputs(module: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """The network's number of outputs (logits), from shapes only (nothing is computed)."""
    params = jax.eval_shape(lambda: networks.init_params(jax.random.key(0), module))
    shape = tuple(getattr(module, "input_shape", None) or input_shape)
    xb = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return int(jax.eval_shape(lambda p, x: networks.apply(module, p, x), params, xb).shape[-1])


def _resolve_chunk(chunk_size, n: int, per_example_bytes: int) -> int:
    if chunk_size is None:
        return n
    if chunk_size == "auto":
        c = max(1, DEFAULT_CHUNK_BYTES // max(int(per_example_bytes), 1))
        c = min(max(1 << int(np.log2(c)), MIN_AUTO_CHUNK), MAX_AUTO_CHUNK)
        return int(min(n, c))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None, 'auto' or a positive int, got {chunk_size!r}")
    return int(min(chunk_size, n))


def widest_layer(params) -> int:
    """The widest layer of a params tree (with or without a population axis): the largest trailing
    dimension over its leaves — what the "auto" chunk rule sizes intermediates by."""
    return int(max(np.shape(w)[-1] for w in jax.tree_util.tree_leaves(params)))


def plan_chunk(
    module: nn.Module,
    npop: int,
    n: int,
    chunk_size: int | str | None = "auto",
    *,
    widest: int,
    table: bool = False,
) -> int:
    """The data chunk the kernels use for ``npop`` members over ``n`` examples (a static int).

    ``chunk_size``: None (all ``n`` at once), an int (capped at ``n``) or ``"auto"``: the power of two nearest
    below ``DEFAULT_CHUNK_BYTES`` over the per-example bytes of the intermediates, clamped to
    [``MIN_AUTO_CHUNK``, ``MAX_AUTO_CHUNK``]. ``widest``: the widest layer (:func:`widest_layer`); ``table``:
    the GA table path is used (its intermediates are the shared table and the logits, see the module doc).
    Callers that evaluate inside their own jitted code (searches, tasks) plan the chunk with this on the
    host and pass it to :func:`eval_masks_jit` / :func:`eval_params_jit`.
    """
    if table:
        widest = int(widest) * 2 ** int(module.sizes[0])
    return _resolve_chunk(chunk_size, int(n), _per_example_bytes(module, int(npop), int(widest)))


# ----------------------------------------------------------------------------------------------
# MLP forward passes of a whole population on one data chunk, "data-minor" layout
#
# Activations are kept as (P, width, c): the data axis is the minor (contiguous) one. Then every hidden
# layer is a batched matmul W_pᵀ (out × in) @ A_p (in × c) which XLA's CPU dot runs as a tall-skinny GEMM
# with M = c — measured 1.5–2× faster than the (P, c, width) layout — and the elementwise work
# (bias, activation, the output layer's reduction, argmax over classes) is vectorised along c.


def _small_input(din: int) -> bool:
    return din <= SMALL_INPUT


def _first_layer(w0s, xt, din):
    """``w0s (R, in) @ xt (in, c)``: for a few inputs as broadcast products (no GEMM with K = 2)."""
    if _small_input(din):
        z = w0s[:, 0, None] * xt[0][None, :]
        for i in range(1, din):
            z = z + w0s[:, i, None] * xt[i][None, :]
        return z
    return w0s @ xt


def _dense_dm(wt, z, b, act, unrolled: bool):
    """``act(z + b)`` then ``(P, o, k) × (P, k, c) -> (P, o, c)``: a batched GEMM, or (few outputs) an
    unrolled FMA chain over k that XLA fuses into ONE loop together with the bias and activation."""
    if not unrolled:
        return jnp.einsum("pok,pkc->poc", wt, act(z + b[:, :, None]))
    out = None
    for k in range(wt.shape[2]):
        term = wt[:, :, k, None] * act(z[:, None, k, :] + b[:, None, k, None])
        out = term if out is None else out + term
    return out


def _later_layers(params, first: int, n_layers: int, margin: bool):
    """Per-member layers ``first … n_layers-1`` as ``[(Wᵀ (P, out, in), b (P, out))]``; with ``margin`` the
    last one is replaced by the difference of its two output units."""
    layers = [
        (jnp.transpose(params[f"dense_{i}"]["kernel"], (0, 2, 1)), params[f"dense_{i}"]["bias"])
        for i in range(first, n_layers)
    ]
    if margin and layers:
        wt, b = layers[-1]
        layers[-1] = ((wt[:, 1] - wt[:, 0])[:, None, :], (b[:, 1] - b[:, 0])[:, None])
    return layers


def _run_layers(z, b, layers, hidden, out_act, margin: bool):
    """Continue from the pre-activation ``z (P, w, c)`` (bias ``b (P, w)`` not yet added) through
    ``layers``; returns ``(P, out, c)`` (margins ``(P, 1, c)`` with ``margin``)."""
    for i, (wt, b_next) in enumerate(layers):
        last = i == len(layers) - 1
        unrolled = last and wt.shape[1] * wt.shape[2] <= UNROLL_MAX
        z, b = _dense_dm(wt, z, b, hidden, unrolled), b_next
    z = z + b[:, :, None]
    return z if margin else out_act(z)


def _mlp_forward_dm(module: MLP, params, margin: bool = False):
    """Per-member weights (leading axis P) → ``f(xt (in, c)) -> (P, out, c)``.

    ``margin=True`` (two outputs, linear output layer): ``(P, 1, c)`` holding ``logit₁ − logit₀`` — class 1
    is predicted iff it is > 0 (``argmax`` picks the first index on ties), half the output-layer work.
    Everything here that does not depend on the data is computed once, outside ``f``.
    """
    n_layers = len(module.sizes) - 1
    hidden, out_act = ACTIVATION_FNS[module.hidden_activation], ACTIVATION_FNS[module.output_activation]
    w0, b0 = params["dense_0"]["kernel"], params["dense_0"]["bias"]  # (P, in, h), (P, h)
    npop, din, width = w0.shape
    if margin and n_layers == 1:
        w0, b0, width = (w0[:, :, 1] - w0[:, :, 0])[:, :, None], (b0[:, 1] - b0[:, 0])[:, None], 1
    w0s = jnp.transpose(w0, (0, 2, 1)).reshape(npop * width, din)  # all first layers stacked: (P·h, in)
    layers = _later_layers(params, 1, n_layers, margin)

    def forward(xt):
        z = _first_layer(w0s, xt, din).reshape(npop, width, xt.shape[1])
        return _run_layers(z, b0, layers, hidden, out_act, margin)

    return forward


def _margin_applies(module: nn.Module, metrics, n_out: int | None) -> bool:
    return (
        isinstance(module, MLP)
        and tuple(metrics) == ("accuracy",)
        and n_out == 2
        and module.output_activation == "none"
    )


def _pool2_bias_act(z, b, act):
    """2×2 max-pool (stride 2) of NHWC ``z (…, H, W, C)``, then ``act(· + b)``.

    Pooling first is exact for a monotone activation: ``act(max(z) + b) == max(act(z + b))`` in floating
    point (rounding is monotone), and it touches a quarter of the elements. Written as reshapes + maxima
    of contiguous halves, which XLA's CPU loop emitter vectorises (``reduce_window`` and strided slices
    were 2–3× slower here).
    """
    *lead, hh, ww, ch = z.shape
    z = z.reshape(*lead, hh // 2, 2, ww // 2, 2 * ch)
    m = jnp.maximum(z[..., 0, :, :], z[..., 1, :, :])
    return act(jnp.maximum(m[..., :ch], m[..., ch:]) + b)


def _cnn_block_size(npop: int, chunk: int) -> int:
    """Members per block in the CNN forward: about ``CNN_BLOCK_MEMBER_IMAGES`` member-images per step."""
    g = max(1, CNN_BLOCK_MEMBER_IMAGES // max(chunk, 1))
    return int(min(1 << int(np.log2(g)), npop))


def member_block_multiple(module: nn.Module, chunk: int) -> int:
    """Members the kernel evaluates together at data chunk ``chunk``: the paper CNN's member block (4 at
    the "auto" chunk of 128 images), else 1. A population split into blocks that are multiples of it gives
    the same numbers as the whole population in one call (measured: ``distributed``'s module doc)."""
    if isinstance(module, PaperCNN):
        return _cnn_block_size(2**30, chunk)
    return 1


def _cnn_forward(module: PaperCNN, params, chunk: int | None = None):
    """The paper CNN for P members → ``f(x (c, 28, 28, 1)) -> (P, classes, c)``.

    Members are processed in blocks (``lax.map``): the first convolution of a block is ONE convolution of
    the shared input with ``block·8`` output channels; the second convolution (80 % of the FLOPs) runs per
    member as a plain convolution over all ``c`` images — on XLA:CPU ~10× faster than the grouped
    convolution (``feature_group_count = P``) of the whole population. ``chunk`` (the number of images
    per call, when known) sets the block size and lets the kernel restacking happen once, outside ``f``.
    """
    dn = ("NHWC", "HWIO", "NHWC")
    npop = population_size(params)

    def prepare(g):
        n_blocks = -(-npop // g)
        padded = _pad_population(params, npop, g)
        k0 = padded["conv_0"]["kernel"]  # (P', 5, 5, 1, 8)
        blocks = {
            # a block's first convolutions stacked along the output channels: (5, 5, 1, g·8)
            "k0": jnp.transpose(k0.reshape(n_blocks, g, *k0.shape[1:]), (0, 2, 3, 4, 1, 5)).reshape(
                n_blocks, *k0.shape[1:4], g * k0.shape[-1]
            ),
            "b0": padded["conv_0"]["bias"].reshape(n_blocks, -1),
            "k1": padded["conv_1"]["kernel"].reshape(n_blocks, g, *padded["conv_1"]["kernel"].shape[1:]),
            "b1": padded["conv_1"]["bias"].reshape(n_blocks, g, -1),
            "w2": padded["dense_0"]["kernel"].reshape(n_blocks, g, *padded["dense_0"]["kernel"].shape[1:]),
            "b2": padded["dense_0"]["bias"].reshape(n_blocks, g, -1),
        }
        return n_blocks, blocks

    def run(x, g, n_blocks, blocks):
        c = x.shape[0]

        def one_block(pb):
            z = jax.lax.conv_general_dilated(x, pb["k0"], (1, 1), "SAME", dimension_numbers=dn)
            z = _pool2_bias_act(z, pb["b0"], jax.nn.relu)  # (c, 14, 14, g·8)
            z = jnp.transpose(z.reshape(*z.shape[:3], g, -1), (3, 0, 1, 2, 4))  # (g, c, 14, 14, 8)

            def one_member(args):
                zm, k1, b1, w2, b2 = args
                zm = jax.lax.conv_general_dilated(zm, k1, (1, 1), "SAME", dimension_numbers=dn)
                zm = _pool2_bias_act(zm, b1, jax.nn.relu)  # (c, 7, 7, 16)
                # flax flattens (h, w, ch): the same order as this NHWC reshape
                return (zm.reshape(c, -1) @ w2 + b2).T  # (classes, c)

            return jax.lax.map(one_member, (z, pb["k1"], pb["b1"], pb["w2"], pb["b2"]))

        out = jax.lax.map(one_block, blocks)  # (blocks, g, classes, c)
        return out.reshape(n_blocks * g, *out.shape[2:])[:npop]

    if chunk is not None:
        g = _cnn_block_size(npop, chunk)
        n_blocks, blocks = prepare(g)  # data-independent: once, outside the chunk loop
        return lambda x: run(x, g, n_blocks, blocks)

    def forward(x):
        g = _cnn_block_size(npop, x.shape[0])
        return run(x, g, *prepare(g))

    return forward


def _forward_chunks(module: nn.Module, member_params, margin: bool = False, chunk: int | None = None):
    """``(f, flat)``: ``f(chunk) -> (P, out, c)``; ``flat``: chunks are fed as ``xᵀ (in, c)`` (MLPs) rather
    than ``(c, *input_shape)``."""
    if isinstance(module, MLP):
        return _mlp_forward_dm(module, member_params, margin), True
    if isinstance(module, PaperCNN):
        return _cnn_forward(module, member_params, chunk), False
    f = lambda x: jax.vmap(lambda p: module.apply({"params": p}, x))(member_params)  # noqa: E731
    return (lambda x: jnp.transpose(f(x), (0, 2, 1))), False


def make_forward(module: nn.Module, member_params):
    """``f(x) -> (P, n, out)``: all members' outputs on a shared batch; leaves of ``member_params``: (P, …).

    Everything that does not depend on the data (stacked kernels) is prepared once, outside ``f``.
    """
    f, flat = _forward_chunks(module, member_params)
    if flat:
        return lambda x: jnp.transpose(f(jnp.reshape(x, (x.shape[0], -1)).T), (0, 2, 1))
    return lambda x: jnp.transpose(f(x), (0, 2, 1))


def forward_population(module: nn.Module, member_params, x):
    """Outputs of every member on a shared batch: ``(P, n, out)``."""
    return make_forward(module, member_params)(x)


def table_path_applies(module: nn.Module) -> bool:
    """GA table path: an MLP whose first hidden layer has few input combinations — ``2**in ≤ 16`` with one
    hidden layer, ``2**in − 1 ≤ 3`` (2 inputs) with more (there the table trades 3× the FLOPs of the
    second layer for one big GEMM)."""
    if not isinstance(module, MLP) or len(module.sizes) < 3:
        return False
    combos = 2 ** int(module.sizes[0])
    return combos <= TABLE_MAX_COMBOS if len(module.sizes) == 3 else combos - 1 <= TABLE_DEEP_MAX_COMBOS


def _ga_table_forward(module: MLP, params, masks, margin: bool = False):
    """GA mode, small input: the first hidden layer as a shared table, the second layer of ALL members as
    ONE matmul (see the module doc); later layers per member. ``f(xt (in, c)) -> (P, out, c)`` (margins
    ``(P, 1, c)`` with ``margin``, as in ``_mlp_forward_dm``).

    Assumes the non-prunable (bias) masks are all ones, as the mask convention says; ``evaluate_masks``
    falls back to the general path when concrete bias masks are not.
    """
    n_layers = len(module.sizes) - 1
    hidden, out_act = ACTIVATION_FNS[module.hidden_activation], ACTIVATION_FNS[module.output_activation]
    w0, b0 = params["dense_0"]["kernel"], params["dense_0"]["bias"]  # (in, h), (h,)
    w1, b1 = params["dense_1"]["kernel"], params["dense_1"]["bias"]  # (h, o), (o,)
    m0, m1 = masks["dense_0"]["kernel"], masks["dense_1"]["kernel"]  # (P, in, h), (P, h, o)
    din, width = w0.shape
    npop = m1.shape[0]
    n_combo = 2**din
    bits = jnp.asarray((np.arange(n_combo)[:, None] >> np.arange(din)[None, :]) & 1, w0.dtype)  # (K, in)
    # member p's hidden unit j uses activation column code[p, j] = its input bits as a number
    code = jnp.sum(m0.astype(jnp.int32) << jnp.arange(din, dtype=jnp.int32)[None, :, None], axis=1)  # (P, h)
    select = jax.nn.one_hot(code, n_combo, dtype=w0.dtype, axis=1)  # (P, K, h)
    w1m = jnp.where(m1, w1[None], 0.0)  # (P, h, o)
    # combo 0 (no input kept) is the data-independent column act(b0): fold it into the next bias
    bias = b1[None, :] + jnp.einsum("pj,pjo->po", select[:, 0] * hidden(b0)[None], w1m)  # (P, o)
    coef = select[:, 1:, :, None] * w1m[:, None, :, :]  # (P, K-1, h, o)
    last = n_layers == 2
    if margin and last:
        coef, bias = coef[..., 1:] - coef[..., :1], bias[:, 1:] - bias[:, :1]
    n_o = coef.shape[-1]
    # table rows ordered (j, k): unit j with input bits k ≠ 0. Unit-major, so that a member's non-zero
    # coefficients come in the same order as the terms of its plain dot product
    coef_t = jnp.transpose(coef, (0, 3, 2, 1)).reshape(npop * n_o, width * (n_combo - 1))  # (P·o, h·(K-1))
    rows = jnp.transpose(w0[:, :, None] * bits[1:].T[:, None, :], (1, 2, 0)).reshape(
        width * (n_combo - 1), din
    )
    rows_b = jnp.repeat(b0, n_combo - 1)
    later = {} if last else jax.tree_util.tree_map(lambda w, m: jnp.where(m, w[None], 0.0), params, masks)
    layers = [] if last else _later_layers(later, 2, n_layers, margin)

    def forward(xt):
        table = hidden(_first_layer(rows, xt, din) + rows_b[:, None])  # (h·(K-1), c): shared by all members
        z = (coef_t @ table).reshape(npop, n_o, xt.shape[1])  # layer 2 of the whole population
        return _run_layers(z, bias, layers, hidden, out_act, margin)

    return forward


# ----------------------------------------------------------------------------------------------
# metric accumulation over chunks


def _chunk_sums(out, y, valid, metrics):
    """Per-member sums over one chunk of outputs ``(P, out, c)``: metric → (P,) (int32 for accuracy)."""
    sums = {}
    if "accuracy" in metrics:
        hit = (jnp.argmax(out, axis=1) == y[None, :]) & valid[None, :]
        sums["accuracy"] = jnp.sum(hit, axis=1, dtype=jnp.int32)
    if "cross_entropy" in metrics:
        logz = jax.nn.logsumexp(out, axis=1)
        picked = jnp.take_along_axis(
            out, jnp.broadcast_to(y[None, None, :], (out.shape[0], 1, out.shape[2])), 1
        )
        sums["cross_entropy"] = jnp.sum(jnp.where(valid[None, :], logz - picked[:, 0], 0.0), axis=1)
    if "mse" in metrics:
        if jnp.issubdtype(y.dtype, jnp.integer):
            target = jax.nn.one_hot(y, out.shape[1], dtype=out.dtype, axis=0)  # (out, c)
        else:
            target = jnp.reshape(y, (y.shape[0], -1)).astype(out.dtype).T
        err = jnp.mean((out - target[None]) ** 2, axis=1)
        sums["mse"] = jnp.sum(jnp.where(valid[None, :], err, 0.0), axis=1)
    return sums


def _margin_sums(out, y, valid, metrics):
    """Accuracy from margins ``(P, 1, c)``: predicted class = 1 iff margin > 0."""
    del metrics
    hit = ((out[:, 0, :] > 0).astype(y.dtype) == y[None, :]) & valid[None, :]
    return {"accuracy": jnp.sum(hit, axis=1, dtype=jnp.int32)}


def _scan_chunks(forward, x, y, metrics, chunk, flat: bool, margin: bool = False):
    """Run ``forward(chunk) -> (P, out, c)`` over the data in chunks; return mean metrics (P,).

    ``flat``: chunks are passed as ``xᵀ (features, c)``. The last chunk is padded and the padding masked.
    """
    n = x.shape[0]
    chunk = max(1, min(chunk, n))
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    valid = jnp.arange(n_chunks * chunk) < n
    if flat:
        x = jnp.reshape(x, (n, -1))
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    yp = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1))
    xs = xp.reshape((n_chunks, chunk, *x.shape[1:]))
    if flat:
        xs = jnp.transpose(xs, (0, 2, 1))  # (chunks, features, c): the data axis minor
    ys = yp.reshape((n_chunks, chunk, *y.shape[1:]))
    vs = valid.reshape(n_chunks, chunk)
    sums_fn = _margin_sums if margin else _chunk_sums

    if n_chunks == 1:
        totals = sums_fn(forward(xs[0]), ys[0], vs[0], metrics)
    else:

        def body(carry, inp):
            xc, yc, vc = inp
            sums = sums_fn(forward(xc), yc, vc, metrics)
            return jax.tree_util.tree_map(jnp.add, carry, sums), None

        first = jax.eval_shape(lambda: sums_fn(forward(xs[0]), ys[0], vs[0], metrics))
        init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), first)
        totals, _ = jax.lax.scan(body, init, (xs, ys, vs))
    return {k: (v.astype(jnp.float32) / n) for k, v in totals.items()}


def _n_out(module: nn.Module) -> int | None:
    return int(module.sizes[-1]) if isinstance(module, MLP) else None


@partial(jax.jit, static_argnames=("module", "metrics", "chunk", "use_table"))
def eval_masks_jit(module, params, masks, x, y, metrics, chunk, use_table):
    """Jitted core of ``evaluate_masks`` (no validation): callable inside other jitted code."""
    metrics = _check_metrics(metrics)
    margin = _margin_applies(module, metrics, _n_out(module))
    if use_table:
        forward, flat = _ga_table_forward(module, params, masks, margin), True
    else:
        member = jax.tree_util.tree_map(
            lambda w, m: jnp.where(m, w[None], jnp.zeros((), w.dtype)), params, masks
        )
        forward, flat = _forward_chunks(module, member, margin, min(chunk, x.shape[0]))
    return _scan_chunks(forward, x, y, metrics, chunk, flat, margin)


@partial(jax.jit, static_argnames=("module", "metrics", "chunk"))
def eval_params_jit(module, member_params, x, y, metrics, chunk):
    """Jitted core of ``evaluate_params`` (no validation): callable inside other jitted code."""
    metrics = _check_metrics(metrics)
    margin = _margin_applies(module, metrics, _n_out(module))
    forward, flat = _forward_chunks(module, member_params, margin, min(chunk, x.shape[0]))
    return _scan_chunks(forward, x, y, metrics, chunk, flat, margin)


# ----------------------------------------------------------------------------------------------
# sharding the population axis


def _pad_population(tree, npop: int, multiple: int):
    pad = (-npop) % multiple
    if pad == 0:
        return tree
    # repeat the first member as padding (any valid member works; its results are dropped)
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), tree)


@lru_cache(maxsize=64)
def _sharded_fn(mode: str, module, metrics, chunk: int, use_table: bool, devices: tuple):
    """The jitted ``shard_map`` of one kernel, cached per static configuration (re-wrapping it on every
    call would retrace and recompile it every time)."""
    mesh = Mesh(np.array(devices), ("pop",))
    if mode == "masks":

        def fn(masks, params, x, y):
            return eval_masks_jit(module, params, masks, x, y, metrics, chunk, use_table)

        in_specs = (P("pop"), P(), P(), P())
    else:

        def fn(member_params, x, y):
            return eval_params_jit(module, member_params, x, y, metrics, chunk)

        in_specs = (P("pop"), P(), P())
    # check_vma=False: the chunk scan starts from replicated zeros but accumulates per-device sums
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P("pop"), check_vma=False)
    return mesh, jax.jit(mapped)


def _sharded(mode: str, statics: tuple, pop_tree, shared, npop):
    """Evaluate the ``mode`` kernel with ``pop_tree``'s leading axis split over all devices."""
    mesh, fn = _sharded_fn(mode, *statics, tuple(jax.devices()))
    padded = _pad_population(pop_tree, npop, mesh.devices.size)
    padded = jax.device_put(padded, NamedSharding(mesh, P("pop")))
    out = fn(padded, *shared)
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
    check_data(module, x, y, metrics)
    if use_table is None:
        use_table = table_path_applies(module) and _biases_unmasked(params, masks)
    elif use_table and not table_path_applies(module):
        raise ValueError(
            "use_table=True needs an MLP with one hidden layer and 2**in_features ≤ 16, "
            "or more hidden layers and 2 inputs"
        )
    elif use_table and not _biases_unmasked(params, masks):
        raise ValueError(
            "use_table=True assumes all-ones bias masks (biases are never pruned), but these masks prune "
            "a bias; pass use_table=None or False"
        )
    masks = jax.tree_util.tree_map(lambda m: jnp.asarray(m, bool), masks)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    widest = max(np.shape(w)[-1] for w in jax.tree_util.tree_leaves(params))
    if use_table:
        widest = widest * 2 ** module.sizes[0]
    chunk = _resolve_chunk(chunk_size, x.shape[0], _per_example_bytes(module, npop, widest))
    fn = partial(eval_masks_jit, module, metrics=metrics, chunk=chunk, use_table=bool(use_table))
    if shard and jax.device_count() > 1:
        return _sharded("masks", (module, metrics, chunk, bool(use_table)), masks, (params, x, y), npop)
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
    check_data(module, x, y, metrics)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    widest = max(np.shape(w)[-1] for w in jax.tree_util.tree_leaves(member_params))
    chunk = _resolve_chunk(chunk_size, x.shape[0], _per_example_bytes(module, npop, widest))
    fn = partial(eval_params_jit, module, metrics=metrics, chunk=chunk)
    if shard and jax.device_count() > 1:
        return _sharded("params", (module, metrics, chunk, False), member_params, (x, y), npop)
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
    """Bytes of per-chunk intermediates per example, for "auto" chunking.

    ``widest``: the widest layer; callers pass ``hidden · 2**in`` for the GA table path, which is
    recognised here (its intermediates are the ``((2**in − 1)·h, c)`` table and the ``(P·out, c)`` logits).
    """
    if isinstance(module, PaperCNN):
        # one member's first-conv output per image: "auto" gives chunk 128 (sweep: 128–256 best, 16–64
        # within 10–20 %); the member block then holds CNN_BLOCK_MEMBER_IMAGES / chunk members
        return 4 * 28 * 28 * 8
    if isinstance(module, MLP) and table_path_applies(module):
        h, combos = int(module.sizes[1]), 2 ** int(module.sizes[0])
        if widest >= h * combos:
            return 4 * ((combos - 1) * h + npop * int(module.sizes[2]))
    return 4 * npop * widest
