"""Control tasks: gymnax and Brax environments behind the task protocol (``tasks.base``).

Three layers, each usable on its own:

1. **Env adapter** (:func:`make_env` → :class:`Env`, a static, hashable object with pure functions)::

       env.reset(key) -> (obs, env_state)
       env.step(key, env_state, action) -> (obs, env_state, reward, done)          # no auto-reset
       env.step_terminal(key, env_state, action) -> (obs, env_state, reward, terminated, truncated)
       env.obs_size, env.action_space (Discrete(n) | Box(low, high)), env.max_steps, env.name, env.backend

   ``obs`` is a flat float32 vector, ``reward`` float32, ``done = terminated | truncated`` where truncated
   means the env's OWN episode limit (gymnax ``max_steps_in_episode``; Brax 1000 steps, the standard
   ``envs.create`` limit, counted in our env state). Nothing resets automatically: after ``done`` the
   caller decides (our rollouts stop counting; a PPO trainer resets). gymnax envs are called through
   ``reset_env``/``step_env`` + ``is_truncated`` (gymnax 1.0's ``step`` would auto-reset); Brax envs are
   the raw ``envs.get_environment`` objects (no EpisodeWrapper / AutoResetWrapper). Any gymnax env id
   works (observations are flattened, so MinAtar's (10, 10, c) grids become vectors); Brax: ant,
   halfcheetah, hopper, humanoid, humanoidstandup, inverted_pendulum, inverted_double_pendulum, pusher,
   reacher, swimmer, walker2d. :func:`from_functions` wraps a user's own pure functions.

   Two envs compare equal (and hash equal) when their SPEC — (name, backend, overrides, mass scale) —
   is equal, so a task rebuilt from the same config reuses compiled code. ``make_env`` is cached.

2. **Variants for transfer.** ``overrides`` set gymnax ``EnvParams`` fields (Pendulum ``m``: 1.0 → 1.5;
   CartPole ``masspole``, ``length``, …) with the DERIVED CartPole fields ``total_mass = masscart +
   masspole`` and ``polemass_length = masspole · length`` recomputed (setting a derived field directly is
   an error), or Brax constructor arguments (``ctrl_cost_weight``, ``healthy_z_range``, …); unknown names
   are a ``ValueError`` listing the allowed ones. ``mass_scale`` (Brax only) multiplies a body's mass AND
   inertia tensor: a number scales the first body (Ant's torso, 0.484 → 0.726 for 1.5, standing in for
   the paper's 10 → 15 of brax.v1's Ant), a mapping ``{body name: factor}`` named bodies. Both the Brax
   link inertia (generalized / spring / positional pipelines) and the MJX model fields (``body_mass``,
   ``body_inertia``, ``body_subtreemass`` of the body and its ancestors) are changed, via
   ``sys.tree_replace``. MJX's ``body_invweight0`` (a solver regulariser computed from the masses at
   load time) is left as loaded.

3. **Policies and rollouts.** The policy is ``networks.make_network("mlp", sizes=[obs, *hidden, act],
   hidden_activation="tanh", output_activation="none")``; the output becomes an action by
   ``action_mode``: ``argmax`` (discrete; act = n logits), ``tanh`` (box: ``mid + half · tanh(out)``,
   exactly tanh for [−1, 1]), ``raw`` (the output itself; Pendulum in the paper, the env clips),
   ``clip`` (clipped to the box). ``auto`` = argmax for discrete, raw for Pendulum-v1, tanh otherwise.
   Members carry their own weights (``base.member_params`` applies GA/NeTS masks, so pruned weights are
   exact zeros) and see their own observations, so the forward is a ``vmap`` over members of a batched
   (rollouts × obs) matmul, not the shared-input population kernels.

   :func:`population_rollouts` runs members × rollouts in blocks of members (``lax.map`` over blocks);
   each block is a ``lax.while_loop`` over time steps that stops when all of ITS episodes are done or the
   horizon (``min(episode_length, env.max_steps)``) is reached. The result equals a full-length
   ``lax.scan`` (nothing is counted after ``done``, and blocks do not change results), but a block of
   falling CartPoles costs tens of steps, not 500, and its policy weights stay in cache
   (:func:`auto_block`: 8 members × 8 rollouts for gymnax, all members at once for Brax). Per step it
   keeps a ``done`` flag per episode: the reward of the step that ends an episode counts, nothing after
   it does (the env state after done keeps evolving in the batch but never leaks reward, steps or
   statistics). Keys: episode ``(p, r)`` resets with ``split(k)[0]`` and steps with
   ``fold_in(split(k)[1], t)`` where ``k`` is :func:`rollout_keys` ``(key, P, R, common)[p, r]``;
   ``common=True`` gives every member of a generation the same R env seeds (the paper's EvoJAX
   ``SimManager`` did this; common random numbers make the ranking less noisy). Only per-episode return
   sums, step counts, a non-finite flag and the observation statistics leave the loop — never
   trajectories: evosax's ``GymnaxProblem``/``BraxProblem`` return every env state of every step (Ant,
   256 × 8 × 500: ≈ 5 GB per generation).

   Measured against them in the same run (``benchmarks/rollouts.py``, P = 256 × R = 8, the same weights,
   2 shared CPU cores, time per generation): Pendulum-v1 (2×64, 200 steps) 108 vs 185 ms (1.7×: both
   spend most of a step in the same per-member 64 × 64 matmul, tanh and the env's own sin/cos/fmod);
   CartPole-v1 from random θ₀ 105 vs 329 ms (3.1×, early exit per block); CartPole without termination
   (all 500 steps) 167 vs 360 ms (2.2×); Brax ant (spring, 100 steps) 22.5 vs 23.7 s (parity: the physics
   dominates), returning 1.2 KB vs 1.04 GB (≈ 5.2 GB at 500 steps).

Observation normalisation (:class:`ObsStats`)
---------------------------------------------
Running mean/variance over every observation a member ACTED ON during the population's TRAINING
rollouts: steps before ``done`` only, with a finite observation (a NaN/inf observation is skipped).
Within a generation the loop accumulates ``Σ (x − c)`` and ``Σ (x − c)²`` around the current running
mean ``c`` (so the first-generation shift is 0 and later ones are nearly centred, no cancellation); the
batch (count, mean, M2) is then merged into the running statistics with Chan et al.'s exact parallel
formula (``merge_stats``). The variance is the population variance M2 / n — what NumPy's ``var`` gives
on the same observations. ``fitness`` returns the updated statistics (the task state); ``evaluate`` and
``evaluate_members`` only read them (frozen). The count is float32: exact up to 2²⁴ ≈ 1.7 M steps, then
relative error ≤ 6e-8 (a paper run, 3000 × 256 × 8 × 500 ≈ 3e9 steps, would overflow an int32 count).

Normalised observation = ``clip((x − mean) · 1/sqrt(clip(var, 1e-6, 1e6)), −obs_clip, obs_clip)`` with
``var = 1`` before any statistics. ``obs_clip = 5`` by default: the paper's code normalised with
EvoJAX's ``ObsNormalizer`` (clip ±5, variance clipped to [1e-6, 1e6], updated from valid training steps
only); evosax 0.3's problems do not clip, clip std (not variance) to [1e-6, 1e6], and count every step,
after termination included. ``obs_clip=None`` disables the clip; ``normalize_obs=False`` feeds raw
observations and leaves the statistics untouched. (EvoJAX pairs each observation with the done flag
AFTER its step, dropping the observation the terminating action was chosen on, and divides M2 by n + 1;
we count that observation and use M2 / n.)

Non-finite values. An episode whose observation, policy output or reward becomes NaN/inf stops there
and is flagged; a member with any flagged training episode gets fitness −inf (it ranks last in any
maximising search; the ES adapter replaces it by the worst finite value before ``tell``), and its
flagged steps never reach the normaliser. ``evaluate`` reports ``return = −inf`` when a test episode is
non-finite, and the count (``nonfinite``).

Evaluation uses a FIXED key (``key(eval_seed)``) so the same ``test_episodes`` episodes score every
evaluation (``evaluate`` takes no key).

Brax backends on this 2-core CPU (ant, random actions, ``vmap`` over 64 envs × 100 steps, jitted scan;
measured with the machine shared, load ≈ 2–5)::

    spring       17.3 k steps/s   compile  9 s
    mjx          15.4 k           compile 12 s
    generalized   5.7 k           compile 10 s
    positional    5.1 k           compile 13 s

``backend=None`` picks ``spring`` (fastest; also the paper's brax.v1 Ant ran its ``legacy_spring``
physics), and ``generalized`` for swimmer (the only backend Brax supports for it). The backends are
different physics (ant under random actions: 1 of 64 episodes ended unhealthy within 100 steps with
spring, 40 with generalized), so returns are comparable only within one backend.

brax.v1 (the paper's grasp, fetch, ur5e). These envs exist only in brax ≤ 0.12.3's ``brax.v1``. Tried
here: ``pip install 'brax==0.12.3' jax==0.10.2`` in a fresh venv resolves and installs (mujoco 4.0.1,
mujoco-mjx 3.17.0); ``import brax.v1`` then fails on ``jax.interpreters.batching.BatchTracer`` (gone from
jax's public module); with that one alias restored (:func:`_import_brax_v1` sets it on
``jax.interpreters.batching`` when a v1 env is requested), grasp (obs 132,
act 19), fetch (101, 10), ur5e (66, 6) and v1's ant (87, 8) reset and step under ``jit``, and this
adapter's current-Brax envs also work unchanged on brax 0.12.3. brax 0.12.3 REPLACES brax 0.14 (one
distribution), so brax.v1 is an alternative install, not an addition. With it: ``make_env("grasp")``
(backend ``legacy_spring``, the paper's physics; or ``pbd``), and any v1 env with
``backend="legacy_spring"``, e.g. ``make_env("ant", backend="legacy_spring", mass_scale=1.5)`` is the
paper's Ant with torso mass 10 → 15 exactly (``mass_scale`` rebuilds the v1 system from its config).
Without it, these names raise a ``ValueError`` saying how to install it and naming a current substitute
(:data:`LEGACY_BRAX_V1`: grasp → pusher, fetch → ant, ur5e → reacher).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from es_lottery import distributed, networks
from es_lottery._checks import check_bool, check_choice, check_int, check_number, is_number
from es_lottery.tasks.base import TaskBase, member_params, members_size

PyTree = Any

__all__ = [
    "ACTION_MODES",
    "BRAX_BACKENDS",
    "BRAX_ENVS",
    "BRAX_V1_BACKENDS",
    "BRAX_V1_ENVS",
    "CONFIG_FIELDS",
    "GYMNAX_BACKEND",
    "LEGACY_BRAX_V1",
    "POLICY_FIELDS",
    "Box",
    "BraxEnvState",
    "ControlTask",
    "Discrete",
    "Env",
    "ObsStats",
    "RolloutResult",
    "auto_block",
    "batch_stats",
    "check_policy",
    "control_task_from_config",
    "from_functions",
    "inverse_std",
    "make_control_task",
    "make_env",
    "merge_stats",
    "normalize",
    "policy_forward",
    "population_rollouts",
    "rollout_keys",
    "to_action",
]

GYMNAX_BACKEND = "gymnax"
BRAX_ENVS = (
    "ant",
    "halfcheetah",
    "hopper",
    "humanoid",
    "humanoidstandup",
    "inverted_double_pendulum",
    "inverted_pendulum",
    "pusher",
    "reacher",
    "swimmer",
    "walker2d",
)
BRAX_BACKENDS = ("spring", "generalized", "positional", "mjx")
DEFAULT_BRAX_BACKEND = "spring"
BRAX_BACKEND_ONLY = {"swimmer": ("generalized",)}  # Brax raises for other backends
BRAX_MAX_STEPS = 1000  # brax.envs.create's default episode_length (the standard Brax episode)
BRAX_V1_BACKENDS = ("legacy_spring", "pbd")  # brax.v1's two dynamics modes (the paper: legacy_spring)
BRAX_V1_ENVS = (
    "acrobot",
    "ant",
    "fast",
    "fetch",
    "grasp",
    "halfcheetah",
    "hopper",
    "humanoid",
    "humanoidstandup",
    "inverted_double_pendulum",
    "inverted_pendulum",
    "pusher",
    "reacher",
    "reacherangle",
    "swimmer",
    "ur5e",
    "walker2d",
)
LEGACY_BRAX_V1 = {  # envs that exist only in brax.v1 (brax <= 0.12.3), and current substitutes
    "grasp": "pusher (an arm moving an object to a goal; grasp's claw picks an object up and carries it)",
    "fetch": "ant (fetch's agent is a legged 'dog' running to a target; ant runs forward)",
    "ur5e": "reacher (an arm moving its end effector to a target; ur5e is a 6-joint arm doing the same)",
    "reacherangle": "reacher",
    "acrobot": "Acrobot-v1 (gymnax)",
}
V1_INSTALL = (
    "brax.v1 ships with brax <= 0.12.3: pip install 'brax==0.12.3' (it replaces brax 0.14; the current "
    "envs keep working with this adapter)"
)
ACTION_MODES = ("auto", "argmax", "tanh", "raw", "clip")
RAW_OUTPUT_ENVS = ("Pendulum-v1",)  # paper: raw output for Pendulum (the env clips the torque)
PAPER_HIDDEN = {"Pendulum-v1": (64, 64)}  # paper: 2×64 for Pendulum, 2×32 for the others
DEFAULT_HIDDEN = (32, 32)
VAR_MIN, VAR_MAX = 1e-6, 1e6  # EvoJAX's ObsNormalizer bounds on the running variance
DEFAULT_OBS_CLIP = 5.0  # EvoJAX's ObsNormalizer clip (the paper's code)
CARTPOLE_DERIVED = {"total_mass": ("masscart", "masspole"), "polemass_length": ("masspole", "length")}


# ----------------------------------------------------------------------------------------------
# action spaces


@dataclass(frozen=True)
class Discrete:
    """``n`` actions 0..n−1 (int32 scalars)."""

    n: int

    @property
    def size(self) -> int:
        return self.n


@dataclass(frozen=True)
class Box:
    """A float32 box; ``low``/``high`` are flat tuples (``shape`` is what the env takes)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.low)

    @property
    def bounded(self) -> bool:
        return all(math.isfinite(v) for v in (*self.low, *self.high))


def _box(low, high, shape) -> Box:
    shape = tuple(int(s) for s in shape) or (1,)
    lo = np.broadcast_to(np.asarray(low, np.float64), shape).ravel()
    hi = np.broadcast_to(np.asarray(high, np.float64), shape).ravel()
    return Box(tuple(float(v) for v in lo), tuple(float(v) for v in hi), shape)


# ----------------------------------------------------------------------------------------------
# the env adapter


@dataclass(frozen=True, eq=False)
class Env:
    """One environment as pure functions (see the module doc). Build with :func:`make_env`.

    ``raw``: the wrapped object — gymnax ``(env, env_params)``, the Brax env, or None (custom).
    """

    name: str
    backend: str
    obs_size: int
    action_space: Discrete | Box
    max_steps: int
    spec: tuple = field(repr=False)
    raw: Any = field(repr=False, default=None)
    _reset: Callable = field(repr=False, default=None)
    _step: Callable = field(repr=False, default=None)

    def __eq__(self, other) -> bool:
        return isinstance(other, Env) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def reset(self, key: jax.Array):
        """``(obs (obs_size,) float32, env_state)``."""
        return self._reset(key)

    def step_terminal(self, key: jax.Array, state, action):
        """``(obs, env_state, reward, terminated, truncated)``; truncated = the env's own time limit."""
        return self._step(key, state, action)

    def step(self, key: jax.Array, state, action):
        """``(obs, env_state, reward, done)`` with ``done = terminated | truncated``; no auto-reset."""
        obs, state, reward, terminated, truncated = self._step(key, state, action)
        return obs, state, reward, jnp.logical_or(terminated, truncated)


def _flat_obs(obs) -> jax.Array:
    return jnp.reshape(jnp.asarray(obs, jnp.float32), (-1,))


def _gymnax_ids() -> tuple[str, ...]:
    import gymnax

    return tuple(gymnax.registered_envs)


def _check_name(name) -> str:
    """'gymnax', 'brax' or 'brax_v1' for a known env name; one ValueError otherwise."""
    if isinstance(name, str) and name in BRAX_ENVS:
        return "brax"
    if isinstance(name, str) and name in LEGACY_BRAX_V1:
        return "brax_v1"
    gym = _gymnax_ids()
    if isinstance(name, str) and name in gym:
        return "gymnax"
    raise ValueError(
        f"unknown env name {name!r}; allowed: gymnax {', '.join(gym)}; brax {', '.join(BRAX_ENVS)}; "
        f"brax.v1 only {', '.join(LEGACY_BRAX_V1)}"
    )


def _check_backend(name: str, kind: str, backend) -> tuple[str, str]:
    """(kind, backend) — a brax.v1 backend turns the kind into 'brax_v1'."""
    if kind == "gymnax":
        if backend not in (None, GYMNAX_BACKEND):
            raise ValueError(
                f"unknown backend {backend!r} for the gymnax env {name!r}; allowed: None, {GYMNAX_BACKEND!r}"
            )
        return kind, GYMNAX_BACKEND
    if kind == "brax_v1":
        if backend not in (None, *BRAX_V1_BACKENDS):
            raise ValueError(
                f"unknown backend {backend!r} for the brax.v1 env {name!r}; "
                f"allowed: {', '.join(BRAX_V1_BACKENDS)}"
            )
        return kind, backend or BRAX_V1_BACKENDS[0]
    allowed = BRAX_BACKEND_ONLY.get(name, BRAX_BACKENDS)
    if backend in BRAX_V1_BACKENDS and name in BRAX_V1_ENVS:
        return "brax_v1", backend
    if backend is None:
        return kind, DEFAULT_BRAX_BACKEND if DEFAULT_BRAX_BACKEND in allowed else allowed[0]
    if backend not in allowed:
        raise ValueError(
            f"unknown backend {backend!r} for the brax env {name!r}; allowed: {', '.join(allowed)} "
            f"(brax.v1: {', '.join(BRAX_V1_BACKENDS)})"
        )
    return kind, backend


def _import_brax_v1(name: str):
    """``brax.v1.envs``, or a ValueError saying how to get it and what to use instead."""
    from jax.interpreters import batching

    # brax.v1's jumpy reads jax.interpreters.batching.BatchTracer, gone from jax's public module
    if not hasattr(batching, "BatchTracer"):
        from jax._src.interpreters import batching as _batching

        batching.BatchTracer = _batching.BatchTracer
    try:
        from brax.v1 import envs as v1_envs
    except ImportError as err:
        sub = LEGACY_BRAX_V1.get(name)
        raise ValueError(
            f"env {name!r} needs brax.v1, which is not installed ({err}); {V1_INSTALL}"
            + (f"; substitute among current envs: {sub}" if sub else "")
        ) from None
    return v1_envs


def _freeze_overrides(overrides) -> tuple[tuple[str, Any], ...]:
    if overrides is None:
        return ()
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must be a mapping of parameter name to value, got {overrides!r}")
    out = []
    for k, v in sorted(overrides.items()):
        if not isinstance(k, str):
            raise ValueError(f"overrides keys must be parameter names (strings), got {k!r}")
        if isinstance(v, list | tuple):
            if not all(is_number(x) or isinstance(x, bool) for x in v):
                raise ValueError(f"overrides[{k!r}] must be a number, a bool or a list of numbers, got {v!r}")
            v = tuple(float(x) if is_number(x) else x for x in v)
        elif not (is_number(v) or isinstance(v, bool | np.bool_)):
            raise ValueError(f"overrides[{k!r}] must be a number, a bool or a list of numbers, got {v!r}")
        out.append((k, v))
    return tuple(out)


def _freeze_mass_scale(mass_scale, kind: str, name: str):
    if mass_scale is None:
        return None
    if kind == "gymnax":
        raise ValueError(
            f"mass_scale applies to Brax envs only; for the gymnax env {name!r} set the mass through "
            "overrides (e.g. Pendulum-v1 {'m': 1.5}, CartPole-v1 {'masspole': 0.15})"
        )
    if isinstance(mass_scale, Mapping):
        items = []
        for body, f in sorted(mass_scale.items()):
            if not isinstance(body, str):
                raise ValueError(f"mass_scale keys must be body names, got {body!r}")
            items.append((body, check_number(f, f"mass_scale[{body!r}]", 0.0, lo_open=True)))
        if not items:
            raise ValueError("mass_scale must be a positive number or a non-empty mapping {body: factor}")
        return tuple(items)
    return ((None, check_number(mass_scale, "mass_scale", 0.0, lo_open=True)),)


def make_env(name: str, backend: str | None = None, overrides: Mapping | None = None, mass_scale=None) -> Env:
    """The :class:`Env` for a gymnax id or a Brax env name (see the module doc).

    ``backend``: gymnax envs ``None``/``"gymnax"``; Brax ``None`` (spring; generalized for swimmer) or one
    of ``BRAX_BACKENDS``. ``overrides``: gymnax ``EnvParams`` fields / Brax constructor arguments.
    ``mass_scale``: Brax only; a factor for the first body or ``{body name: factor}``. Every argument is
    validated (one ``ValueError`` naming the field and the allowed values) before anything is built.
    """
    kind = _check_name(name)
    kind, backend = _check_backend(name, kind, backend)
    frozen = _freeze_overrides(overrides)
    scale = _freeze_mass_scale(mass_scale, kind, name)
    return _make_env_cached(name, kind, backend, frozen, scale)


@functools.lru_cache(maxsize=64)
def _make_env_cached(name, kind, backend, overrides, mass_scale) -> Env:
    spec = (name, backend, overrides, mass_scale)
    if kind == "gymnax":
        return _gymnax_env(name, overrides, spec)
    if kind == "brax_v1":
        return _brax_v1_env(name, backend, overrides, mass_scale, spec)
    return _brax_env(name, backend, overrides, mass_scale, spec)


def _gymnax_params(name: str, params, overrides):
    import dataclasses

    fields = [f.name for f in dataclasses.fields(params)]
    derived = CARTPOLE_DERIVED if name == "CartPole-v1" else {}
    unknown = [k for k, _ in overrides if k not in fields]
    if unknown:
        raise ValueError(
            f"unknown override {', '.join(map(repr, unknown))} for {name}; allowed: "
            f"{', '.join(f for f in fields if f not in derived)}"
        )
    bad = [k for k, _ in overrides if k in derived]
    if bad:
        raise ValueError(
            f"override {bad[0]!r} of {name} is derived ({' and '.join(derived[bad[0]])}); override those "
            "and it is recomputed"
        )
    values = {}
    for k, v in overrides:
        old = getattr(params, k)
        if isinstance(v, tuple):  # an array field (Acrobot's available_torque)
            if np.shape(old) != (len(v),):
                raise ValueError(f"override {k!r} of {name} must have the shape {np.shape(old)}, got {v!r}")
            values[k] = jnp.asarray(v, jnp.asarray(old).dtype)
        elif np.ndim(old) != 0:
            raise ValueError(f"override {k!r} of {name} must be a list of {np.size(old)} numbers, got {v!r}")
        elif isinstance(old, bool | np.bool_):
            values[k] = check_bool(v, f"overrides[{k!r}]")
        elif isinstance(old, int | np.integer):
            if float(v) != int(v):
                raise ValueError(f"override {k!r} of {name} must be an integer, got {v!r}")
            values[k] = int(v)
        else:
            values[k] = float(v)
    params = params.replace(**values)
    if name == "CartPole-v1":
        params = params.replace(
            total_mass=params.masscart + params.masspole, polemass_length=params.masspole * params.length
        )
    return params


def _gymnax_env(name: str, overrides, spec) -> Env:
    import gymnax
    from gymnax.environments import spaces

    genv, params = gymnax.make(name)
    params = _gymnax_params(name, params, overrides)
    aspace = genv.action_space(params)
    if isinstance(aspace, spaces.Discrete):
        action_space: Discrete | Box = Discrete(int(aspace.n))
    elif isinstance(aspace, spaces.Box):
        action_space = _box(aspace.low, aspace.high, aspace.shape)
    else:
        raise ValueError(
            f"the gymnax env {name!r} has a {type(aspace).__name__} action space; only Discrete and Box"
        )
    obs_shape = jax.eval_shape(lambda k: genv.reset_env(k, params)[0], jax.random.key(0)).shape
    max_steps = int(params.max_steps_in_episode)

    def reset(key):
        obs, state = genv.reset_env(key, params)
        return _flat_obs(obs), state

    if isinstance(action_space, Box):
        ashape = action_space.shape

        def fmt(a):
            return jnp.reshape(jnp.asarray(a, jnp.float32), ashape)
    else:

        def fmt(a):
            return jnp.asarray(a, jnp.int32)

    def step(key, state, action):
        obs, state, reward, terminated, _ = genv.step_env(key, state, fmt(action), params)
        truncated = genv.is_truncated(state, params)
        return (
            _flat_obs(obs),
            state,
            jnp.asarray(reward, jnp.float32).reshape(()),
            jnp.asarray(terminated, bool).reshape(()),
            jnp.asarray(truncated, bool).reshape(()),
        )

    return Env(
        name=name,
        backend=GYMNAX_BACKEND,
        obs_size=int(np.prod(obs_shape)),
        action_space=action_space,
        max_steps=max_steps,
        spec=spec,
        raw=(genv, params),
        _reset=reset,
        _step=step,
    )


@struct.dataclass
class BraxEnvState:
    """A Brax pipeline env state plus the step count (for the 1000-step limit)."""

    brax_state: Any
    time: jax.Array


def _scale_bodies(sys, env_name: str, scales) -> Any:
    """Multiply mass and inertia of the given links (``None`` = the first) in every pipeline's fields."""
    names = list(sys.link_names)
    mass = np.array(sys.link.inertia.mass)
    inertia = np.array(sys.link.inertia.i)
    body_mass = np.array(sys.body_mass)
    body_inertia = np.array(sys.body_inertia)
    subtree = np.array(sys.body_subtreemass)
    parent = np.asarray(sys.body_parentid)
    if body_mass.shape[0] != len(names) + 1:
        raise RuntimeError(
            f"unexpected Brax system layout for {env_name}: {len(names)} links, {body_mass.shape[0]} bodies"
        )
    for body, f in scales:
        if body is None:
            idx = 0
        elif body in names and body:
            idx = names.index(body)
        else:
            raise ValueError(
                f"unknown body {body!r} in mass_scale for {env_name}; "
                f"allowed: {', '.join(n for n in names if n)}"
            )
        delta = body_mass[idx + 1] * (f - 1.0)
        mass[idx] *= f
        inertia[idx] *= f
        body_mass[idx + 1] *= f
        body_inertia[idx + 1] *= f
        b = idx + 1
        while True:  # the body and all its ancestors carry its mass in their subtree
            subtree[b] += delta
            if b == 0:
                break
            b = int(parent[b])
    f32 = jnp.float32
    return sys.tree_replace(
        {
            "link.inertia.mass": jnp.asarray(mass, f32),
            "link.inertia.i": jnp.asarray(inertia, f32),
            "body_mass": jnp.asarray(body_mass, sys.body_mass.dtype),
            "body_inertia": jnp.asarray(body_inertia, sys.body_inertia.dtype),
            "body_subtreemass": jnp.asarray(subtree, sys.body_subtreemass.dtype),
        }
    )


def _brax_env(name: str, backend: str, overrides, mass_scale, spec) -> Env:
    from brax import envs as brax_envs

    cls = brax_envs._envs[name]
    allowed = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "backend", "kwargs")
    ]
    unknown = [k for k, _ in overrides if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown override {', '.join(map(repr, unknown))} for the brax env {name!r}; allowed: "
            f"{', '.join(allowed) if allowed else '(none: it takes no arguments)'}"
        )
    benv = brax_envs.get_environment(name, backend=backend, **dict(overrides))
    if mass_scale:
        benv.sys = _scale_bodies(benv.sys, name, mass_scale)
    sys = benv.sys
    rng = np.asarray(sys.actuator_ctrlrange, np.float64)
    limited = np.asarray(sys.actuator_ctrllimited, bool)
    low = np.where(limited, rng[:, 0], -1.0)
    high = np.where(limited, rng[:, 1], 1.0)
    action_space = _box(low, high, (int(benv.action_size),))
    return _wrap_brax(name, backend, benv, action_space, spec)


def _wrap_brax(name: str, backend: str, benv, action_space, spec) -> Env:
    """The :class:`Env` of a Brax environment object (``brax.envs`` or ``brax.v1.envs``: the same
    ``reset(key)`` / ``step(state, action)`` interface, deterministic dynamics)."""
    obs_shape = jax.eval_shape(benv.reset, jax.random.key(0)).obs.shape

    def reset(key):
        s = benv.reset(key)
        return _flat_obs(s.obs), BraxEnvState(brax_state=s, time=jnp.int32(0))

    def step(key, state, action):
        del key  # Brax dynamics are deterministic
        s = benv.step(state.brax_state, jnp.asarray(action, jnp.float32).reshape(action_space.shape))
        t = state.time + 1
        return (
            _flat_obs(s.obs),
            BraxEnvState(brax_state=s, time=t),
            jnp.asarray(s.reward, jnp.float32).reshape(()),
            (jnp.asarray(s.done) > 0.5).reshape(()),
            t >= BRAX_MAX_STEPS,
        )

    return Env(
        name=name,
        backend=backend,
        obs_size=int(np.prod(obs_shape)),
        action_space=action_space,
        max_steps=BRAX_MAX_STEPS,
        spec=spec,
        raw=benv,
        _reset=reset,
        _step=step,
    )


def _scale_v1_bodies(config, env_name: str, scales):
    """A copy of a brax.v1 config with the mass and (diagonal) inertia of the given bodies scaled."""
    config = type(config).FromString(config.SerializeToString())
    names = [b.name for b in config.bodies]
    for body, f in scales:
        if body is None:
            idx = 0
        elif body in names:
            idx = names.index(body)
        else:
            raise ValueError(
                f"unknown body {body!r} in mass_scale for {env_name}; allowed: {', '.join(names)}"
            )
        b = config.bodies[idx]
        b.mass *= f
        b.inertia.x *= f
        b.inertia.y *= f
        b.inertia.z *= f
    return config


def _brax_v1_env(name: str, backend: str, overrides, mass_scale, spec) -> Env:
    v1_envs = _import_brax_v1(name)
    from brax import v1 as brax_v1

    factory = v1_envs._envs[name]
    target = factory.func if isinstance(factory, functools.partial) else factory
    allowed = [
        p
        for p in inspect.signature(target.__init__).parameters
        if p not in ("self", "legacy_spring", "kwargs")
    ]
    unknown = [k for k, _ in overrides if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown override {', '.join(map(repr, unknown))} for the brax.v1 env {name!r}; allowed: "
            f"{', '.join(allowed) if allowed else '(none: it takes no arguments)'}"
        )
    benv = factory(legacy_spring=backend == "legacy_spring", **dict(overrides))
    if mass_scale:
        benv.sys = brax_v1.System(_scale_v1_bodies(benv.sys.config, name, mass_scale))
    size = int(benv.action_size)
    action_space = _box(-1.0, 1.0, (size,))  # brax.v1 actuators take [-1, 1]
    return _wrap_brax(name, backend, benv, action_space, spec)


def from_functions(
    name: str,
    reset: Callable,
    step: Callable,
    obs_size: int,
    action_space: Discrete | Box,
    max_steps: int,
) -> Env:
    """An :class:`Env` from your own pure functions: ``reset(key) -> (obs, state)`` and
    ``step(key, state, action) -> (obs, state, reward, terminated)`` (no auto-reset). The episode limit
    ``max_steps`` truncates through the rollouts' horizon (``step_terminal`` reports truncated = False).
    Envs from the same two function objects compare equal."""
    if not (callable(reset) and callable(step)):
        raise TypeError(
            "reset and step must be callables: reset(key) -> (obs, state), step(key, state, a) -> 4-tuple"
        )
    if not isinstance(action_space, Discrete | Box):
        raise ValueError(f"action_space must be a control.Discrete or control.Box, got {action_space!r}")
    obs_size = check_int(obs_size, "obs_size", 1)
    max_steps = check_int(max_steps, "max_steps", 1)

    def reset_(key):
        obs, state = reset(key)
        return _flat_obs(obs), state

    def step_(key, state, action):
        obs, state, reward, terminated = step(key, state, action)
        return (
            _flat_obs(obs),
            state,
            jnp.asarray(reward, jnp.float32).reshape(()),
            jnp.asarray(terminated, bool).reshape(()),
            jnp.bool_(False),
        )

    return Env(
        name=str(name),
        backend="custom",
        obs_size=obs_size,
        action_space=action_space,
        max_steps=max_steps,
        spec=("custom", str(name), reset, step, obs_size, action_space, max_steps),
        raw=None,
        _reset=reset_,
        _step=step_,
    )


# ----------------------------------------------------------------------------------------------
# observation statistics


@struct.dataclass
class ObsStats:
    """Running observation statistics: ``count`` (float32 scalar), ``mean`` and ``m2`` (sum of squared
    deviations) per observation entry. ``var = m2 / count`` (1 before any data)."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @classmethod
    def zeros(cls, size: int) -> ObsStats:
        z = jnp.zeros((size,), jnp.float32)
        return cls(count=jnp.float32(0.0), mean=z, m2=z)

    @property
    def var(self) -> jax.Array:
        return jnp.where(self.count > 0, self.m2 / jnp.maximum(self.count, 1.0), 1.0)


def merge_stats(a: ObsStats, b: ObsStats) -> ObsStats:
    """Chan et al.'s exact parallel merge of two sets of (count, mean, M2)."""
    n = a.count + b.count
    safe = jnp.maximum(n, 1.0)
    delta = b.mean - a.mean
    mean = jnp.where(n > 0, a.mean + delta * (b.count / safe), a.mean)
    m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / safe)
    return ObsStats(count=n, mean=mean, m2=jnp.where(n > 0, m2, a.m2))


def batch_stats(obs: jax.Array, valid: jax.Array | None = None) -> ObsStats:
    """(count, mean, M2) of the rows of ``obs`` (``(..., D)``) where ``valid`` (``(...)``) holds and every
    entry is finite."""
    obs = jnp.asarray(obs, jnp.float32)
    ok = jnp.all(jnp.isfinite(obs), axis=-1)
    if valid is not None:
        ok = ok & jnp.asarray(valid, bool)
    x = jnp.where(ok[..., None], obs, 0.0).reshape(-1, obs.shape[-1])
    w = ok.reshape(-1).astype(jnp.float32)
    n = jnp.sum(w)
    mean = jnp.sum(x, axis=0) / jnp.maximum(n, 1.0)
    d = (x - mean) * w[:, None]
    return ObsStats(count=n, mean=mean, m2=jnp.sum(d * d, axis=0))


def inverse_std(stats: ObsStats) -> jax.Array:
    """``1 / sqrt(clip(var, 1e-6, 1e6))`` per observation entry."""
    return 1.0 / jnp.sqrt(jnp.clip(stats.var, VAR_MIN, VAR_MAX))


def normalize(
    stats: ObsStats, obs: jax.Array, clip: float | None = DEFAULT_OBS_CLIP, inv_std=None
) -> jax.Array:
    """``(obs − mean) · inverse_std(stats)``, clipped to ±``clip`` (None: no clip). ``inv_std``: the
    precomputed :func:`inverse_std` (rollouts compute it once, not per step and hidden unit)."""
    x = (obs - stats.mean) * (inverse_std(stats) if inv_std is None else inv_std)
    return x if clip is None else jnp.clip(x, -clip, clip)


# ----------------------------------------------------------------------------------------------
# policies and actions


def default_action_mode(env: Env) -> str:
    if isinstance(env.action_space, Discrete):
        return "argmax"
    return "raw" if env.name in RAW_OUTPUT_ENVS else "tanh"


def _resolve_action_mode(env: Env, mode: str) -> str:
    check_choice(mode, ACTION_MODES, "action_mode")
    if mode == "auto":
        return default_action_mode(env)
    discrete = isinstance(env.action_space, Discrete)
    if discrete != (mode == "argmax"):
        kind = "discrete" if discrete else "box"
        ok = "argmax" if discrete else "tanh, raw, clip"
        raise ValueError(
            f"action_mode {mode!r} does not fit the {kind} action space of {env.name}; allowed: auto, {ok}"
        )
    if mode in ("tanh", "clip") and not env.action_space.bounded:
        raise ValueError(
            f"action_mode {mode!r} needs finite action bounds; {env.name} has {env.action_space}"
        )
    return mode


def to_action(out: jax.Array, space: Discrete | Box, mode: str) -> jax.Array:
    """Map policy outputs ``(..., act)`` to env actions (``(...)`` int32 or ``(..., act)`` float32)."""
    if mode == "argmax":
        return jnp.argmax(out, axis=-1).astype(jnp.int32)
    low = np.asarray(space.low, np.float32)
    high = np.asarray(space.high, np.float32)
    if mode == "tanh":
        mid, half = (high + low) / 2, (high - low) / 2
        return mid + half * jnp.tanh(out)
    if mode == "clip":
        return jnp.clip(out, low, high)
    return out


def check_policy(policy: nn.Module, env: Env) -> None:
    """``ValueError`` unless ``policy`` is an MLP taking ``env.obs_size`` inputs and giving one output per
    action (discrete: n logits; box: one per action entry)."""
    if not isinstance(policy, networks.MLP):
        raise ValueError(
            f"policy must be a networks.MLP (make_network('mlp', ...)), got {type(policy).__name__}"
        )
    policy.validate()
    sizes = tuple(int(s) for s in policy.sizes)
    if sizes[0] != env.obs_size:
        raise ValueError(
            f"policy input size {sizes[0]} does not fit {env.name}: observations have {env.obs_size} entries"
        )
    want = env.action_space.size
    if sizes[-1] != want:
        what = (
            f"{want} logits (Discrete({want}))" if isinstance(env.action_space, Discrete) else f"{want} (Box)"
        )
        raise ValueError(
            f"policy output size {sizes[-1]} does not fit the action space of {env.name}: needs {what}"
        )


SMALL_FAN = 8  # first layers with ≤ this many inputs / output layers with ≤ this many outputs: see below


def policy_forward(policy: nn.Module, params: PyTree, x: jax.Array) -> jax.Array:
    """The MLP ``policy`` of every member on its own observations: ``params`` with a leading axis P,
    ``x`` (P, R, D) → (P, R, act); equal to ``vmap(policy.apply)`` up to float32 rounding.

    Written out per layer because the tiny per-member matmuls are the cost of a gymnax rollout
    (P = 256, R = 8, measured per step on this CPU): a first layer with ≤ 8 inputs as broadcast FMAs
    (4 → 32: 7 µs vs 32 µs as a batched matmul), an output layer with ≤ 8 outputs as one batched
    matrix-vector product per output (32 → 2: 27 µs vs 64–165 µs; 32 → 8: 45 vs 175 µs), hidden layers as
    batched matmuls (32 → 32 ≈ 0.1–0.2 ms, 64 → 64 ≈ 0.6 ms: the bulk of a Pendulum step).
    """
    n = len(policy.sizes) - 1
    hidden = networks.ACTIVATION_FNS[policy.hidden_activation]
    last = networks.ACTIVATION_FNS[policy.output_activation]
    for i in range(n):
        w, b = params[f"dense_{i}"]["kernel"], params[f"dense_{i}"]["bias"]  # (P, in, out), (P, out)
        fan_in, fan_out = w.shape[1], w.shape[2]
        if i == 0 and fan_in <= SMALL_FAN:
            y = x[..., 0:1] * w[:, None, 0, :]
            for k in range(1, fan_in):
                y = y + x[..., k : k + 1] * w[:, None, k, :]
        elif i == n - 1 and fan_out <= SMALL_FAN:
            y = jnp.stack([jnp.einsum("prd,pd->pr", x, w[:, :, j]) for j in range(fan_out)], axis=-1)
        else:
            y = jnp.einsum("prd,pdh->prh", x, w)
        x = (last if i == n - 1 else hidden)(y + b[:, None, :])
    return x


# ----------------------------------------------------------------------------------------------
# rollouts


@struct.dataclass
class RolloutResult:
    """What a population rollout returns (never trajectories).

    ``returns`` (P, R) float32 reward sums up to done; ``lengths`` (P, R) int32 steps taken;
    ``nonfinite`` (P, R) bool: the episode hit a NaN/inf observation, policy output or reward (stopped
    there); ``obs_batch``: :class:`ObsStats` of the valid, finite observations acted on.
    """

    returns: jax.Array
    lengths: jax.Array
    nonfinite: jax.Array
    obs_batch: ObsStats


def rollout_keys(key: jax.Array, num_members: int, num_rollouts: int, common: bool) -> jax.Array:
    """Episode keys ``(P, R)``: ``common`` → ``split(key, R)`` for every member, else ``split(key, (P, R))``.
    Episode ``(p, r)`` resets with ``split(k)[0]`` and steps with ``fold_in(split(k)[1], t)``,
    ``k = keys[p, r]``.
    """
    if common:
        ks = jax.random.split(key, num_rollouts)
        return jnp.broadcast_to(ks, (num_members, num_rollouts))
    return jax.random.split(key, (num_members, num_rollouts))


def _block_runner(
    env: Env,
    policy: nn.Module,
    action_mode: str,
    horizon: int,
    stats: ObsStats,
    normalize_obs: bool,
    obs_clip: float | None,
    common: bool,
    block: int,
    num_rollouts: int,
    common_keys: jax.Array | None,
):
    """``run_block((params, keys, live)) -> (returns, lengths, nonfinite, n, Σ(x − c), Σ(x − c)²)`` of one
    block of ``block`` members (see :func:`population_rollouts`); ``common_keys`` (R,) with ``common``."""
    split = jax.vmap(lambda k: jax.random.split(k))
    shift = stats.mean
    inv_std = inverse_std(stats)
    if common:
        kk = split(common_keys)  # (R, 2)
        common_reset, common_run = kk[:, 0], kk[:, 1]

    def run_block(args):
        p, k, live = args
        if common:
            obs, st = jax.vmap(env.reset)(common_reset)
            obs, st = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (block, *x.shape)), (obs, st))
        else:
            kk = jax.vmap(split)(k)  # (B, R, 2)
            k_run = kk[..., 1]
            obs, st = jax.vmap(jax.vmap(env.reset))(kk[..., 0])
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))

        def step_all(t, st, act):
            if common:
                kt = fold(common_run, t)  # (R,)
                return jax.vmap(jax.vmap(env.step_terminal), in_axes=(None, 0, 0))(kt, st, act)
            kt = jax.vmap(fold, in_axes=(0, None))(k_run, t)  # (B, R)
            return jax.vmap(jax.vmap(env.step_terminal))(kt, st, act)

        def cond(c):
            return (c["t"] < horizon) & jnp.any(c["alive"])

        def body(c):
            obs, alive = c["obs"], c["alive"]
            obs_ok = jnp.all(jnp.isfinite(obs), axis=-1)
            x = normalize(stats, obs, obs_clip, inv_std) if normalize_obs else obs
            x = jax.lax.optimization_barrier(x)  # computed once, not inside every first-layer unit
            out = policy_forward(policy, p, x)  # (B, R, act)
            out_ok = jnp.all(jnp.isfinite(out), axis=-1)
            obs2, st2, rew, term, trunc = step_all(
                c["t"], c["st"], to_action(out, env.action_space, action_mode)
            )
            valid = alive & obs_ok  # the observation counts for the normaliser
            acted = valid & out_ok
            rew_ok = jnp.isfinite(rew)
            counted = valid if live is None else valid & live[:, None]
            d = jnp.where(counted[..., None], obs - shift, 0.0)
            return {
                "t": c["t"] + 1,
                "obs": obs2,
                "st": st2,
                "ret": c["ret"] + jnp.where(acted & rew_ok, rew, 0.0),
                "len": c["len"] + acted.astype(jnp.int32),
                "alive": acted & rew_ok & ~(term | trunc),
                "bad": c["bad"] | (alive & ~(obs_ok & out_ok & rew_ok)),
                "n": c["n"] + counted.astype(jnp.float32),
                "s1": c["s1"] + d,
                "s2": c["s2"] + d * d,
            }

        shape = (block, num_rollouts)
        init = {
            "t": jnp.int32(0),
            "obs": obs,
            "st": st,
            "ret": jnp.zeros(shape, jnp.float32),
            "len": jnp.zeros(shape, jnp.int32),
            "alive": jnp.ones(shape, bool),
            "bad": jnp.zeros(shape, bool),
            "n": jnp.zeros(shape, jnp.float32),
            "s1": jnp.zeros((*shape, shift.shape[0]), jnp.float32),
            "s2": jnp.zeros((*shape, shift.shape[0]), jnp.float32),
        }
        c = jax.lax.while_loop(cond, body, init)
        sums = (jnp.sum(c["n"]), jnp.sum(c["s1"], axis=(0, 1)), jnp.sum(c["s2"], axis=(0, 1)))
        return c["ret"], c["len"], c["bad"], *sums

    return run_block


def _rollout_result(stats: ObsStats, ret, length, bad, n, s1, s2) -> RolloutResult:
    """Per-member results and the per-block sums ``n (blocks,)``, ``s1, s2 (blocks, obs)`` → result."""
    n, s1, s2 = jnp.sum(n), jnp.sum(s1, axis=0), jnp.sum(s2, axis=0)
    safe = jnp.maximum(n, 1.0)
    shift = stats.mean
    batch = ObsStats(count=n, mean=shift + s1 / safe, m2=jnp.maximum(s2 - s1 * s1 / safe, 0.0))
    return RolloutResult(returns=ret, lengths=length, nonfinite=bad, obs_batch=batch)


def population_rollouts(
    env: Env,
    policy: nn.Module,
    action_mode: str,
    params: PyTree,
    keys: jax.Array,
    horizon: int,
    stats: ObsStats,
    normalize_obs: bool = True,
    obs_clip: float | None = DEFAULT_OBS_CLIP,
    common: bool = False,
    member_block: int | None = None,
    sharding: distributed.PopulationSharding | None = None,
) -> RolloutResult:
    """Members × episodes, jittable (every argument but ``params``, ``keys`` and ``stats`` static).

    ``params``: per-member weights, leading axis P; ``keys``: ``(P, R)`` from :func:`rollout_keys` — with
    ``common=True`` only row 0 is read (every member gets the same episodes). ``stats``: the frozen
    normaliser; the batch statistics come back in ``obs_batch``. ``member_block``: members per block (the
    blocks run one after another, each in its own time loop, so a block's weights stay in cache; None =
    all members in one block). Results do not depend on it.

    ``sharding`` (:mod:`es_lottery.distributed`): the same blocks spread over its devices
    (``distributed.map_blocks``), the per-block observation sums combined in block order as here — so a
    sharded rollout returns exactly the numbers of an unsharded one with the same ``member_block``.
    """
    num_members, num_rollouts = keys.shape
    block = num_members if member_block is None else max(1, min(int(member_block), num_members))
    num_blocks = -(-num_members // block)
    pad = num_blocks * block - num_members
    settings = (env, policy, action_mode, horizon)
    flags = (normalize_obs, obs_clip, common, block, num_rollouts)
    if sharding is not None:

        def sharded_block(members, live, shared):
            p, k = members
            run_block = _block_runner(*settings, shared[0], *flags, shared[1])
            ret, length, bad, n, s1, s2 = run_block((p, None if common else k, live))
            return (ret, length, bad), (n, s1, s2)

        common_keys = keys[0] if common else None
        (ret, length, bad), sums = distributed.map_blocks(
            sharded_block, (params, keys), (stats, common_keys), sharding, block
        )
        return _rollout_result(stats, ret, length, bad, *sums)
    run_block = _block_runner(*settings, stats, *flags, keys[0] if common else None)

    def padded(x):  # (P, ...) -> (num_blocks, block, ...), padding rows copy row 0
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])
        return x.reshape(num_blocks, block, *x.shape[1:])

    real = (jnp.arange(num_blocks * block) < num_members).reshape(num_blocks, block) if pad else None
    params_b = jax.tree_util.tree_map(padded, params)
    keys_b = None if common else padded(keys)

    if num_blocks == 1:
        first = jax.tree_util.tree_map(lambda x: x[0], (params_b, keys_b, real))
        out = jax.tree_util.tree_map(lambda x: x[None], run_block(first))
    else:
        out = jax.lax.map(run_block, (params_b, keys_b, real))
    ret, length, bad, n, s1, s2 = out
    ret, length, bad = (x.reshape(num_blocks * block, num_rollouts)[:num_members] for x in (ret, length, bad))
    return _rollout_result(stats, ret, length, bad, n, s1, s2)


BLOCK_ENVS = 64  # gymnax auto block: members per block × episodes per member ≈ this


def auto_block(env: Env, num_members: int, num_rollouts: int) -> int:
    """Members per block of :func:`population_rollouts`: gymnax/custom envs ``BLOCK_ENVS // R`` (≥ 1),
    Brax envs all members at once (its physics, not the policy, dominates a step and wants wide batches).

    CPU time per generation on this machine (P = 256 × R = 8, shared cores, ±10 %), by members per block:

    ==============================================  =====  =====  =====  =====  =====
    members per block                                   2      4      8     16    256
    CartPole-v1 from random θ₀ (10 % balance ≥ 139)    72     78     87    197    178 ms
    CartPole-v1 without termination (500 steps)       255    187    152    237    176 ms
    Pendulum-v1, 2×64 (200 steps)                       –    119    108    113    157 ms
    ==============================================  =====  =====  =====  =====  =====

    Small blocks stop as soon as THEIR episodes are done and keep their weights in cache; below 8
    members per block the fixed cost of each loop step wins.
    """
    if env.backend in BRAX_BACKENDS or env.backend in BRAX_V1_BACKENDS:
        return num_members
    return max(1, min(BLOCK_ENVS // max(num_rollouts, 1), num_members))


# ----------------------------------------------------------------------------------------------
# the task


@struct.dataclass
class ControlTask(TaskBase):
    """A control problem behind the task protocol (build with :func:`make_control_task` or
    :func:`control_task_from_config`). Every field is static; the state is an :class:`ObsStats`.

    ``episode_length`` is the horizon actually used: the requested length capped by ``env.max_steps``.

    ``sharding`` (:mod:`es_lottery.distributed`): rollouts run their member blocks (:meth:`block_for`)
    over the sharding's devices — the same blocks, so the same numbers as unsharded, as long as a block
    is smaller than the population (gymnax: 8 members at 8 rollouts); where one block would hold every
    member (Brax's default) the sharded block is ``sharding.block_size(P)``.
    """

    env: Env = struct.field(pytree_node=False)
    policy: nn.Module = struct.field(pytree_node=False)
    action_mode: str = struct.field(pytree_node=False, default="auto")
    episode_length: int = struct.field(pytree_node=False, default=500)
    train_rollouts: int = struct.field(pytree_node=False, default=8)
    test_episodes: int = struct.field(pytree_node=False, default=64)
    common_keys: bool = struct.field(pytree_node=False, default=True)
    normalize_obs: bool = struct.field(pytree_node=False, default=True)
    obs_clip: float | None = struct.field(pytree_node=False, default=DEFAULT_OBS_CLIP)
    eval_seed: int = struct.field(pytree_node=False, default=0)
    member_block: int | None = struct.field(pytree_node=False, default=None)
    score_key: str = struct.field(pytree_node=False, default="return")
    sharding: distributed.PopulationSharding | None = struct.field(pytree_node=False, default=None)

    @property
    def module(self) -> nn.Module:
        """The policy network (the name every task that owns a network uses)."""
        return self.policy

    def block_for(self, num_members: int, num_rollouts: int, sharded: bool = False) -> int:
        """Members per block of :func:`population_rollouts` (``member_block``, or :func:`auto_block`);
        ``sharded`` (with a ``sharding``): a block that would hold every member is split into
        ``sharding.block_size(P)``."""
        if self.member_block is not None:
            block = min(self.member_block, num_members)
        else:
            block = auto_block(self.env, num_members, num_rollouts)
        if sharded and self.sharding is not None and block >= num_members:
            block = self.sharding.block_size(num_members)
        return block

    # -- protocol ------------------------------------------------------------------------------

    def init_state(self, key: jax.Array) -> ObsStats:
        """Empty observation statistics (the key is unused)."""
        del key
        return ObsStats.zeros(self.env.obs_size)

    def init_params(self, key: jax.Array) -> PyTree:
        """Initial policy weights (θ₀)."""
        return networks.init_params(key, self.policy)

    def rollouts(
        self, state: ObsStats, key: jax.Array, members, num_rollouts: int, common: bool, shard: bool = True
    ) -> RolloutResult:
        """``num_rollouts`` episodes of every member (``members``: params with a leading P axis or a
        :class:`MaskedPopulation`) under the frozen normaliser ``state``; over the task's ``sharding``
        unless ``shard=False``."""
        params = member_params(members)
        keys = rollout_keys(key, members_size(members), num_rollouts, common)
        sharding = self.sharding if shard else None
        return population_rollouts(
            self.env,
            self.policy,
            self.action_mode,
            params,
            keys,
            self.episode_length,
            state,
            self.normalize_obs,
            self.obs_clip,
            common,
            self.block_for(members_size(members), num_rollouts, sharding is not None),
            sharding,
        )

    def fitness_metrics(self, state: ObsStats, key: jax.Array, members):
        """Mean training return per member (−inf if any of its episodes went non-finite), metrics
        ``return`` (the same), ``episode_length`` (mean steps), ``env_steps`` (steps taken),
        ``nonfinite`` (episodes flagged), and the normaliser updated with this generation's valid steps."""
        res = self.rollouts(state, key, members, self.train_rollouts, self.common_keys)
        bad = jnp.any(res.nonfinite, axis=1)
        fit = jnp.where(bad, -jnp.inf, jnp.mean(res.returns, axis=1))
        if self.normalize_obs:
            state = merge_stats(state, res.obs_batch)
        metrics = {
            "return": fit,
            "episode_length": jnp.mean(res.lengths.astype(jnp.float32), axis=1),
            "env_steps": jnp.sum(res.lengths, axis=1).astype(jnp.float32),
            "nonfinite": jnp.sum(res.nonfinite, axis=1).astype(jnp.float32),
        }
        return fit, metrics, state

    def fitness(self, state: ObsStats, key: jax.Array, members):
        fit, _, state = self.fitness_metrics(state, key, members)
        return fit, state

    @property
    def eval_key(self) -> jax.Array:
        return jax.random.key(self.eval_seed)

    def _test_metrics(self, res: RolloutResult) -> dict:
        """{name: (P,)} over the test episodes (axis 1)."""
        bad = res.nonfinite
        n_ok = jnp.maximum(jnp.sum(~bad, axis=1), 1)
        ret_ok = jnp.where(bad, 0.0, res.returns)
        mean_ok = jnp.sum(ret_ok, axis=1) / n_ok
        var_ok = jnp.sum(jnp.where(bad, 0.0, (res.returns - mean_ok[:, None]) ** 2), axis=1) / n_ok
        any_bad = jnp.any(bad, axis=1)
        return {
            "return": jnp.where(any_bad, -jnp.inf, jnp.mean(res.returns, axis=1)),
            "return_std": jnp.sqrt(var_ok),
            "return_min": jnp.min(jnp.where(bad, jnp.inf, res.returns), axis=1),
            "return_max": jnp.max(jnp.where(bad, -jnp.inf, res.returns), axis=1),
            "episode_length": jnp.mean(res.lengths.astype(jnp.float32), axis=1),
            "nonfinite": jnp.sum(bad, axis=1).astype(jnp.float32),
        }

    def evaluate(self, state: ObsStats, params: PyTree) -> dict:
        """Test metrics of ONE network over ``test_episodes`` fixed episodes (key ``eval_seed``), the
        normaliser frozen: ``return`` (mean; −inf if an episode went non-finite), ``return_std`` /
        ``return_min`` / ``return_max`` (over the finite episodes), ``episode_length``, ``nonfinite``."""
        one = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], params)
        res = self.rollouts(state, self.eval_key, one, self.test_episodes, True, shard=False)  # one network
        return {k: v[0] for k, v in self._test_metrics(res).items()}

    def evaluate_members(self, state: ObsStats, members) -> dict:
        """:meth:`evaluate` for every member at once (the same test episodes for all): ``{name: (P,)}``."""
        res = self.rollouts(state, self.eval_key, members, self.test_episodes, True)
        return self._test_metrics(res)


# ----------------------------------------------------------------------------------------------
# construction


POLICY_FIELDS = ("hidden", "activation", "action_mode", "weight_init")
CONFIG_FIELDS = (
    "name",
    "backend",
    "overrides",
    "mass_scale",
    "episode_length",
    "train_rollouts",
    "test_episodes",
    "common_keys",
    "normalize_obs",
    "obs_clip",
    "eval_seed",
    "member_block",
    "policy",
)


def _check_hidden(hidden) -> tuple[int, ...]:
    ok = isinstance(hidden, list | tuple) and all(
        isinstance(h, int | np.integer) and not isinstance(h, bool) and h >= 1 for h in hidden
    )
    if not ok:
        raise ValueError(
            f"hidden must be a list of positive ints (hidden layer widths, may be empty), got {hidden!r}"
        )
    return tuple(int(h) for h in hidden)


def make_control_task(
    env: str | Env,
    *,
    backend: str | None = None,
    overrides: Mapping | None = None,
    mass_scale=None,
    hidden: Sequence[int] | None = None,
    activation: str = "tanh",
    action_mode: str = "auto",
    weight_init: str = "lecun_normal",
    policy: nn.Module | None = None,
    episode_length: int = 500,
    train_rollouts: int = 8,
    test_episodes: int = 64,
    common_keys: bool = True,
    normalize_obs: bool = True,
    obs_clip: float | None = DEFAULT_OBS_CLIP,
    eval_seed: int = 0,
    member_block: int | None = None,
    sharding="context",
) -> ControlTask:
    """A :class:`ControlTask` with the paper's defaults (episode length 500 capped by the env's limit,
    8 training rollouts per member, 64 test episodes, observation normalisation, 2×32 tanh hidden layers —
    2×64 for Pendulum-v1 — and ``action_mode="auto"``).

    ``env``: a name (with ``backend``/``overrides``/``mass_scale`` as in :func:`make_env`) or an
    :class:`Env`. ``policy``: an explicit ``networks.MLP`` instead of ``hidden``/``activation``/
    ``weight_init``; its input and output sizes must fit the env. Everything is checked before any
    compile; each bad value is a ``ValueError`` naming the field and what it accepts. ``sharding``:
    ``"context"`` (default: :func:`es_lottery.distributed.use_devices`'s setting), None or a
    ``PopulationSharding``.
    """
    if isinstance(env, Env):
        if backend is not None or overrides is not None or mass_scale is not None:
            raise ValueError(
                "backend, overrides and mass_scale apply when env is a name; pass them to make_env"
            )
    else:
        env = make_env(env, backend=backend, overrides=overrides, mass_scale=mass_scale)
    mode = _resolve_action_mode(env, action_mode)
    if policy is None:
        widths = PAPER_HIDDEN.get(env.name, DEFAULT_HIDDEN) if hidden is None else _check_hidden(hidden)
        check_choice(activation, networks.HIDDEN_ACTIVATIONS, "activation")
        check_choice(weight_init, networks.INITS, "weight_init")
        policy = networks.make_network(
            "mlp",
            sizes=[env.obs_size, *widths, env.action_space.size],
            hidden_activation=activation,
            output_activation="none",
            weight_init=weight_init,
        )
    elif hidden is not None:
        raise ValueError("give either policy or hidden, not both")
    check_policy(policy, env)
    episode_length = check_int(episode_length, "episode_length", 1)
    clip = None if obs_clip is None else check_number(obs_clip, "obs_clip", 0.0, lo_open=True)
    return ControlTask(
        env=env,
        policy=policy,
        action_mode=mode,
        episode_length=min(episode_length, env.max_steps),
        train_rollouts=check_int(train_rollouts, "train_rollouts", 1),
        test_episodes=check_int(test_episodes, "test_episodes", 1),
        common_keys=check_bool(common_keys, "common_keys"),
        normalize_obs=check_bool(normalize_obs, "normalize_obs"),
        obs_clip=clip,
        eval_seed=check_int(eval_seed, "eval_seed", 0),
        member_block=check_int(member_block, "member_block", 1, allow_none=True),
        sharding=distributed.resolve_sharding(sharding),
    )


def control_task_from_config(config: Mapping, section: str = "env") -> ControlTask:
    """A :class:`ControlTask` from the ``env:`` section of a config::

        env:
          name: ant                  # gymnax id or Brax env
          backend: spring            # optional (Brax); gymnax: omit
          overrides: {}              # gymnax EnvParams fields / Brax constructor arguments
          mass_scale: 1.5            # optional, Brax: first body (or {body: factor})
          episode_length: 500
          train_rollouts: 8
          test_episodes: 64
          common_keys: true
          normalize_obs: true
          obs_clip: 5.0              # or null
          eval_seed: 0
          member_block: null         # members per rollout block (null: auto)
          policy: {hidden: [32, 32], activation: tanh, action_mode: auto, weight_init: lecun_normal}

    Every problem found is reported at once in ONE ``ValueError`` (``env.<field>: …`` per bad field).
    """
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{section} must be a mapping with the fields {', '.join(CONFIG_FIELDS)}, got {config!r}"
        )
    errors: list[str] = []
    unknown = [k for k in config if k not in CONFIG_FIELDS]
    if unknown:
        errors.append(f"unknown field {', '.join(map(repr, unknown))} (allowed: {', '.join(CONFIG_FIELDS)})")
    pol = config.get("policy", {}) or {}
    if not isinstance(pol, Mapping):
        errors.append(f"policy must be a mapping with the fields {', '.join(POLICY_FIELDS)}, got {pol!r}")
        pol = {}
    unknown_pol = [k for k in pol if k not in POLICY_FIELDS]
    if unknown_pol:
        errors.append(
            f"unknown field policy.{', policy.'.join(unknown_pol)} (allowed: {', '.join(POLICY_FIELDS)})"
        )
    if "name" not in config:
        errors.append("name is required (a gymnax id such as CartPole-v1 or a Brax env such as ant)")

    def attempt(fieldname, fn):
        try:
            return fn()
        except (ValueError, TypeError) as e:
            msg = str(e)
            errors.append(msg if fieldname in msg else f"{fieldname}: {msg}")
            return None

    env = None
    if "name" in config:
        env = attempt(
            "name",
            lambda: make_env(
                config["name"],
                backend=config.get("backend"),
                overrides=config.get("overrides") or None,
                mass_scale=config.get("mass_scale"),
            ),
        )
    settings = {
        "episode_length": lambda v: check_int(v, "episode_length", 1),
        "train_rollouts": lambda v: check_int(v, "train_rollouts", 1),
        "test_episodes": lambda v: check_int(v, "test_episodes", 1),
        "common_keys": lambda v: check_bool(v, "common_keys"),
        "normalize_obs": lambda v: check_bool(v, "normalize_obs"),
        "obs_clip": lambda v: None if v is None else check_number(v, "obs_clip", 0.0, lo_open=True),
        "eval_seed": lambda v: check_int(v, "eval_seed", 0),
        "member_block": lambda v: check_int(v, "member_block", 1, allow_none=True),
    }
    kwargs: dict[str, Any] = {}
    for name, check in settings.items():
        if name in config:
            kwargs[name] = attempt(name, lambda check=check, name=name: check(config[name]))
    pol_checks = {
        "hidden": _check_hidden,
        "activation": lambda v: check_choice(v, networks.HIDDEN_ACTIVATIONS, "policy.activation"),
        "action_mode": lambda v: check_choice(v, ACTION_MODES, "policy.action_mode"),
        "weight_init": lambda v: check_choice(v, networks.INITS, "policy.weight_init"),
    }
    for name, check in pol_checks.items():
        if name in pol:
            kwargs[name] = attempt(f"policy.{name}", lambda check=check, name=name: check(pol[name]))
    if env is not None and not errors:
        attempt("policy", lambda: _resolve_action_mode(env, kwargs.get("action_mode", "auto")))
    if errors:
        raise ValueError(f"{section}: " + "; ".join(errors))
    return make_control_task(env, **kwargs)
