"""Masked PPO for control tickets: the gradient baseline of Lange & Sprekeler (2023) on control tasks.

The paper compares ES tickets with iterative magnitude pruning around PPO: the POLICY carries the mask
(re-applied after every update), the critic is not pruned. This module is that trainer, over our own
env adapter (``tasks.control``), so that a PPO-trained policy and an ES-trained policy are the same object:
the same ``networks.MLP`` params tree as ``ControlTask.init_params``, the same observation normaliser
(``ObsStats``), the same action map (``to_action`` with the task's action mode) and the same test score
(``ControlTask.evaluate``). Pruning criteria, masks and ticket transfer work on it unchanged.

Why our own PPO (and brax.training's only as the benchmark's reference)
-----------------------------------------------------------------------
* brax 0.14.2's ``brax.training.agents.ppo.train`` does not run as installed on jax 0.10 (it calls
  ``jax.device_put_replicated``, removed from jax's API), has no discrete-action distribution (CartPole,
  Acrobot), and its policy network emits 2·act outputs (loc and scale), so its params tree is NOT the
  ``ControlTask`` policy tree: every IMP level would have to convert masks and params, and its own
  observation normaliser and evaluator would score policies differently from ES. It drives training from a
  Python loop around ``pmap``; one training run is not a function of a key that can be ``vmap``-ed.
* The closest maintained package, rejax (PyPI 0.1.3, "vectorizable RL algorithms in pure JAX"; read in
  its source, ``rejax/algos/ppo.py``), is jittable and ``vmap``-able but is written against gymnax's
  ``(env, env_params)`` API, builds its own actor modules (another params tree), updates its own
  normaliser at every env step, and applies gradients inside ``update_actor`` with no hook to mask them
  or to re-apply a mask — masked PPO would mean subclassing its update and converting trees at every
  level. (purejaxrl is a set of single-file scripts, not a package.)
* A compact PPO over our env adapter is ≈ 300 lines of code, shares every convention with the ES
  side, and — in the purejaxrl spirit — a whole training run (:func:`train_ppo`) is ONE jittable
  function of a key: ``jax.vmap`` over keys trains seeds together, and the same key gives a
  bit-identical result.

brax.training's PPO is the throughput REFERENCE in ``benchmarks/ppo.py`` only, with the removed jax call
restored for the duration of that call (see the benchmark's doc; ``tests/test_ppo.py`` fails the day the
shim is no longer needed).

Algorithm (PPO-clip, Schulman et al. 2017; the CleanRL / purejaxrl recipe)
-------------------------------------------------------------------------
One UPDATE: ``num_envs`` envs step ``rollout_length`` times (``lax.scan``; an env that is done is reset
from a fresh key — only when some env is done, via ``lax.cond``), then GAE(γ, λ), then
``update_epochs`` passes over the ``num_envs · rollout_length`` transitions in ``num_minibatches``
shuffled minibatches (transitions, not whole trajectories, are shuffled), each one Adam step on::

    loss = −mean(min(ρ·Â, clip(ρ, 1 − ε, 1 + ε)·Â)) + c_v · ½ mean((V − G)²) − c_ent · mean(H)

with one optimiser over (policy, log σ, critic): ``clip_by_global_norm(max_grad_norm)`` then Adam
(ε_Adam 1e-5), the learning rate constant or annealed linearly to 0 over all gradient steps
(``lr_schedule``). ``Â`` is normalised per minibatch (``normalize_advantages``). ``total_env_steps //
(num_envs · rollout_length)`` updates run in one ``lax.scan``.

* **Masking.** The policy gradient is multiplied by the mask BEFORE clipping (pruned weights do not count
  in the gradient norm) and the mask is re-applied to the policy after every Adam step, so pruned weights
  are EXACTLY zero throughout (Adam's moments stay zero there too). Biases are never pruned (their mask
  leaves are all ones by the ``Trainer`` protocol). The critic is a separate network
  (``critic_hidden``, ``critic_activation``, LeCun-normal init) that is never masked; log σ is not a
  kernel and is never masked either.
* **Truncation.** ``Env.step_terminal`` tells a terminal state from the env's own time limit. With
  ``bootstrap_truncation`` (default) the value target of a truncated step bootstraps from V(the final
  observation, before the reset) — the observation is stored pre-reset for every step, and the critic is
  evaluated on all of them after the rollout in one batched pass — while the GAE trace is cut at every
  episode end. (brax's PPO by default zeroes the TD error and the trace at a truncated step — the step
  teaches nothing — and with ``bootstrap_on_timeout`` adds γ·V to its reward.) This matters for
  Pendulum-v1, which never terminates and is always cut at 200 steps.
* **Observation normalisation** — the ES control tasks' :class:`~es_lottery.tasks.control.ObsStats`:
  every observation the policy ACTED ON during the rollout goes into ``batch_stats`` and is merged into
  the running statistics with Chan et al.'s exact parallel formula (``merge_stats``) AFTER the rollout.
  The rollout acts on ``normalize(stats)`` with the statistics frozen for that rollout and the update
  reuses exactly those normalised inputs, so the first minibatch of every update has ratio ρ = 1 exactly
  (brax updates its normaliser before the SGD, so its ratios start ≠ 1). The same clip (the task's
  ``obs_clip``, ±5) and variance bounds as ES; the final statistics are ``TrainResult.task_state`` and
  the policy is scored with them, frozen. ``normalize_obs=None`` (default) keeps the task's setting;
  ``True``/``False`` replaces it in the task (training and evaluation then agree).

Action distributions: a Gaussian or a categorical over the POLICY NETWORK'S OUTPUT
--------------------------------------------------------------------------------
* **Discrete** (``argmax`` mode): a categorical over the logits; deterministic action = argmax = what
  ``ControlTask.evaluate`` plays.
* **Box**: ``z ~ N(f_θ(x), diag σ²)`` with a state-independent learned ``log σ`` (one per action entry,
  ``init_log_std``, kept outside the policy tree so the tree stays the task's); the env receives
  ``to_action(z, space, mode)`` with the TASK's action mode — ``tanh`` → a tanh-squashed Gaussian
  (``mid + half · tanh(z)``, the default for bounded Brax/gymnax boxes), ``raw`` → the Gaussian itself,
  clipped by the env (Pendulum-v1, as in the paper: gymnax clips the torque to ±2), ``clip`` → a clipped
  Gaussian. The deterministic policy is ``to_action(f_θ(x))`` — exactly the ES policy. The likelihood
  ratio uses the density of ``z`` (the squash / clip is treated as part of the environment, so no
  Jacobian term is needed: it would cancel in ρ), and the entropy bonus is the Gaussian's, Σ (log σ +
  ½ log 2πe). Why not brax's tanh-normal with a state-dependent scale: the policy tree must be the ES
  policy tree (act outputs, not 2·act), and the mode decides the squash, so ES and PPO policies for one
  task map outputs to actions identically.

Settings
--------
The paper (Table 3, appendix C): observation normalisation on, Adam, MLP policies (1–3 hidden layers of
32–80 units, tanh output: our task's ``tanh`` action mode), 40–1200 M env steps on Brax with "the
default settings provided in the [Brax] repository" — brax's published Ant settings were: 2048 envs,
unroll 5, 32 minibatches of 1024, 4 epochs, γ 0.97, lr 3e-4, entropy 1e-2, reward scaling 10,
normalised observations. Those need a GPU. :data:`PRESETS` holds CPU-sized settings tuned and tested here
for CartPole-v1, Acrobot-v1 and Pendulum-v1 (``PPOConfig.preset(name, **changes)``); the class defaults
are the CleanRL / purejaxrl ones (γ 0.99, λ 0.95, ε 0.2, c_v 0.5, c_ent 0.01, grad norm 0.5, 4 epochs ×
4 minibatches, linear lr anneal).

Measured (2 shared CPU cores, load 7–9; dense policies from θ₀, test return = ``ControlTask.evaluate``
over 32 fixed test episodes, one run per seed):

==========================  ================  ==========================================  =============
task (preset)               env steps         test return over seeds                      θ₀ itself
==========================  ================  ==========================================  =============
CartPole-v1                 163,840 (preset)  500 on 6 of 6 seeds                         9–10 (7 of 8)
CartPole-v1                 98,304            500 on 6 of 6                               (tests)
CartPole-v1                 65,536            192–500, median 500 (8 seeds)
Pendulum-v1                 409,600 (preset)  −130 … −140, median −132 (6); paper ES ≈ −130  −1180 … −1750
Pendulum-v1                 153,600           −194 … −221 (6)                             (tests)
Acrobot-v1                  163,840 (preset)  −78 … −89 (3)                               −500 (6 of 8)
==========================  ================  ==========================================  =============

Pendulum with 32 minibatches of 200 instead of 8 of 800 left 2 of 6 seeds in the ≈ −550…−600 local
optimum at 153,600 steps (γ 0.9 also avoided it). Compile ≈ 6.4 CPU-s per (task, config) program —
every mask and key reuses it; a CartPole preset run ≈ 1.2 s, a Pendulum preset run ≈ 8–13 s on the
loaded machine (Pendulum's 10 epochs × 8 minibatches of two 64 × 64 MLPs dominate: ≈ 0.9 ms per Adam
step). ``jax.vmap`` over 4 CartPole seeds costs about what 4 sequential runs cost on this CPU (the win is
on accelerators); vmapped results equal single runs up to float rounding.

Throughput against brax.training's PPO (``benchmarks/results/ppo.md``: same hyperparameters, networks and
batch layout, 3 alternating rounds, load 8–11 on the 2 cores): Pendulum-v1 ours/brax 0.91 (median of
rounds; per round 0.51–1.91; fastest run vs fastest epoch 0.83), Brax inverted_pendulum (spring) 1.23
(0.75–1.43; best 0.79) — parity within the noise, as expected: both spend an update in the same MLP
arithmetic. Cold runs (compile included) 37 vs 62 s and 57 vs 140 s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from es_lottery import masks as masks_lib
from es_lottery import networks
from es_lottery._checks import check_bool, check_choice, check_int, check_number
from es_lottery.pruning.loop import TrainResult
from es_lottery.tasks import control

PyTree = Any

__all__ = [
    "LR_SCHEDULES",
    "PRESETS",
    "PPOConfig",
    "PPOOutput",
    "PPOTrainer",
    "make_critic",
    "ppo_task",
    "train_ppo",
]

LR_SCHEDULES = ("constant", "linear")
ADAM_EPS = 1e-5  # CleanRL / purejaxrl
LOG_2PI = math.log(2.0 * math.pi)


def _check_hidden(value, field: str) -> tuple[int, ...]:
    ok = isinstance(value, list | tuple) and all(
        isinstance(h, int | np.integer) and not isinstance(h, bool) and h >= 1 for h in value
    )
    if not ok:
        raise ValueError(f"{field} must be a list of positive ints (hidden layer widths), got {value!r}")
    return tuple(int(h) for h in value)


@dataclass(frozen=True)
class PPOConfig:
    """Static PPO settings (hashable; a static argument of :func:`train_ppo`). Every field is validated
    on construction; a bad value is a ``ValueError`` naming the field.

    total_env_steps: env steps of the whole run; ``total_env_steps // (num_envs · rollout_length)``
        updates run (at least one).
    num_envs / rollout_length: parallel envs and steps per env per update.
    update_epochs / num_minibatches: passes over each rollout and minibatches per pass
        (``num_envs · rollout_length`` must be divisible by ``num_minibatches``).
    learning_rate / lr_schedule: Adam step size; ``linear`` anneals it to 0 over all gradient steps.
    clip_eps / gamma / gae_lambda / ent_coef / vf_coef: PPO-clip ε, discount, GAE λ, loss weights.
    max_grad_norm: global gradient-norm clip (policy, log σ and critic together); ``None`` = no clip.
    normalize_advantages: standardise Â per minibatch.
    reward_scale: rewards are multiplied by it for learning (returns are reported unscaled).
    init_log_std: initial log σ of the Gaussian (box actions; unused for discrete actions).
    bootstrap_truncation: bootstrap V at the env's time limit instead of treating it as terminal.
    actor_hidden / actor_activation: ``None`` = the task's policy (recommended: set the policy in the
        task, so ES and PPO share it); otherwise the task's policy is rebuilt with these.
    critic_hidden / critic_activation: the unpruned critic MLP.
    normalize_obs: ``None`` = the task's setting; a bool replaces it (training and evaluation agree).
    """

    total_env_steps: int = 500_000
    num_envs: int = 16
    rollout_length: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 3e-4
    lr_schedule: str = "linear"
    clip_eps: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float | None = 0.5
    normalize_advantages: bool = True
    reward_scale: float = 1.0
    init_log_std: float = 0.0
    bootstrap_truncation: bool = True
    actor_hidden: tuple[int, ...] | None = None
    actor_activation: str | None = None
    critic_hidden: tuple[int, ...] = (64, 64)
    critic_activation: str = "tanh"
    normalize_obs: bool | None = None

    def __post_init__(self):
        set_ = partial(object.__setattr__, self)
        set_("num_envs", check_int(self.num_envs, "num_envs", 1))
        set_("rollout_length", check_int(self.rollout_length, "rollout_length", 1))
        set_("update_epochs", check_int(self.update_epochs, "update_epochs", 1))
        set_("num_minibatches", check_int(self.num_minibatches, "num_minibatches", 1))
        set_("total_env_steps", check_int(self.total_env_steps, "total_env_steps", 1))
        batch = self.num_envs * self.rollout_length
        if batch % self.num_minibatches:
            raise ValueError(
                f"num_minibatches must divide num_envs · rollout_length = {batch}, got {self.num_minibatches}"
            )
        if self.total_env_steps < batch:
            raise ValueError(
                f"total_env_steps must be ≥ num_envs · rollout_length = {batch} (one update), "
                f"got {self.total_env_steps}"
            )
        set_("learning_rate", check_number(self.learning_rate, "learning_rate", 0.0, lo_open=True))
        check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        set_("clip_eps", check_number(self.clip_eps, "clip_eps", 0.0, lo_open=True))
        set_("gamma", check_number(self.gamma, "gamma", 0.0, 1.0))
        set_("gae_lambda", check_number(self.gae_lambda, "gae_lambda", 0.0, 1.0))
        set_("ent_coef", check_number(self.ent_coef, "ent_coef", 0.0))
        set_("vf_coef", check_number(self.vf_coef, "vf_coef", 0.0))
        if self.max_grad_norm is not None:
            set_("max_grad_norm", check_number(self.max_grad_norm, "max_grad_norm", 0.0, lo_open=True))
        check_bool(self.normalize_advantages, "normalize_advantages")
        set_("reward_scale", check_number(self.reward_scale, "reward_scale", 0.0, lo_open=True))
        set_("init_log_std", check_number(self.init_log_std, "init_log_std", -20.0, 5.0))
        check_bool(self.bootstrap_truncation, "bootstrap_truncation")
        if self.actor_hidden is not None:
            set_("actor_hidden", _check_hidden(self.actor_hidden, "actor_hidden"))
        if self.actor_activation is not None:
            check_choice(self.actor_activation, networks.HIDDEN_ACTIVATIONS, "actor_activation")
        set_("critic_hidden", _check_hidden(self.critic_hidden, "critic_hidden"))
        check_choice(self.critic_activation, networks.HIDDEN_ACTIVATIONS, "critic_activation")
        if self.normalize_obs is not None:
            check_bool(self.normalize_obs, "normalize_obs")

    # -- derived sizes ---------------------------------------------------------------------------

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_length

    @property
    def num_updates(self) -> int:
        return self.total_env_steps // self.steps_per_update

    @property
    def minibatch_size(self) -> int:
        return self.steps_per_update // self.num_minibatches

    @property
    def env_steps(self) -> int:
        """Env steps actually taken (``num_updates · num_envs · rollout_length``)."""
        return self.num_updates * self.steps_per_update

    def replace(self, **kw) -> PPOConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def preset(cls, name: str, **changes) -> PPOConfig:
        """The tested settings for ``name`` (a key of :data:`PRESETS`), with ``changes`` applied."""
        check_choice(name, PRESETS, "PPO preset")
        return cls(**{**PRESETS[name], **changes})

    @classmethod
    def from_mapping(cls, spec: Mapping | None, section: str = "trainer") -> PPOConfig:
        """From a config mapping (YAML): lists become tuples; an optional ``preset: <name>`` starts from
        :data:`PRESETS`; ``type`` is ignored. Unknown fields and bad values are ONE ``ValueError``
        naming ``<section>.<field>``."""
        spec = dict(spec or {})
        spec.pop("type", None)
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in spec if k not in (*fields, "preset")]
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"{section}: unknown field {names} (allowed: preset, {', '.join(fields)})")
        base = {}
        if "preset" in spec:
            name = spec.pop("preset")
            try:
                check_choice(name, PRESETS, "preset")
            except ValueError as err:
                raise ValueError(f"{section}.{err}") from None
            base = dict(PRESETS[name])
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()}
        try:
            return cls(**{**base, **kw})
        except (ValueError, TypeError) as err:
            raise ValueError(f"{section}: {err}") from None


# CPU-sized settings tested here (tests/test_ppo.py; the budgets there are the ones that pass reliably).
_DISCRETE_PRESET = dict(
    total_env_steps=163_840,
    num_envs=16,
    rollout_length=128,
    update_epochs=4,
    num_minibatches=4,
    learning_rate=2.5e-3,
    ent_coef=0.01,
)
PRESETS: dict[str, dict] = {
    "CartPole-v1": dict(_DISCRETE_PRESET),
    "Acrobot-v1": dict(_DISCRETE_PRESET),  # the same settings serve both discrete-action tasks
    "Pendulum-v1": dict(
        total_env_steps=409_600,
        num_envs=32,
        rollout_length=200,
        update_epochs=10,
        num_minibatches=8,
        learning_rate=1e-3,
        gamma=0.95,
        ent_coef=0.0,
        reward_scale=0.1,
    ),
}


# ----------------------------------------------------------------------------------------------
# networks and the task the trainer uses


def ppo_task(task: control.ControlTask, config: PPOConfig) -> control.ControlTask:
    """``task`` with the config's policy / normalisation overrides applied (``None`` fields: unchanged)."""
    if not isinstance(task, control.ControlTask):
        raise TypeError(f"task must be a control.ControlTask, got {type(task).__name__}")
    changes: dict[str, Any] = {}
    if config.actor_hidden is not None or config.actor_activation is not None:
        old = task.policy
        sizes = (
            old.sizes if config.actor_hidden is None else (old.sizes[0], *config.actor_hidden, old.sizes[-1])
        )
        changes["policy"] = networks.make_network(
            "mlp",
            sizes=list(sizes),
            hidden_activation=config.actor_activation or old.hidden_activation,
            output_activation=old.output_activation,
            weight_init=old.weight_init,
        )
    if config.normalize_obs is not None and config.normalize_obs != task.normalize_obs:
        changes["normalize_obs"] = config.normalize_obs
    return task.replace(**changes) if changes else task


def make_critic(obs_size: int, config: PPOConfig) -> networks.MLP:
    """The value network: ``obs → critic_hidden → 1``, LeCun-normal kernels, zero biases."""
    return networks.make_network(
        "mlp",
        sizes=[obs_size, *config.critic_hidden, 1],
        hidden_activation=config.critic_activation,
        output_activation="none",
        weight_init="lecun_normal",
    )


def _forward(module, params: PyTree, x: jax.Array) -> jax.Array:
    """One MLP on a batch ``(..., D)`` → ``(..., out)`` (flax ``apply``: plain dense layers).

    Not ``control.policy_forward`` (the ES rollouts' per-member kernel, equal up to float32 rounding):
    its broadcast-FMA first layer and per-output last layer are fast for many tiny member matmuls but
    their gradients are not — a 3 → 64 → 64 → 1 MLP on 200 rows: 0.65 ms per gradient step against
    0.10 ms for the plain layers (measured here)."""
    lead = x.shape[:-1]
    y = networks.apply(module, params, x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


def _masked(tree: PyTree, mask: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, mask)


def _log_prob_entropy(out, log_std, action, discrete: bool):
    """log π(action) and the entropy per row: categorical over logits, or the diagonal Gaussian of ``z``."""
    if discrete:
        logp_all = jax.nn.log_softmax(out, axis=-1)
        logp = jnp.take_along_axis(logp_all, action[..., None], axis=-1)[..., 0]
        ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        return logp, ent
    std = jnp.exp(log_std)
    zs = (action - out) / std
    logp = jnp.sum(-0.5 * zs * zs - log_std - 0.5 * LOG_2PI, axis=-1)
    ent = jnp.broadcast_to(jnp.sum(log_std + 0.5 * (1.0 + LOG_2PI)), logp.shape)
    return logp, ent


def _sample(key, out, log_std, discrete: bool):
    if discrete:
        return jax.random.categorical(key, out, axis=-1).astype(jnp.int32)
    return out + jnp.exp(log_std) * jax.random.normal(key, out.shape, out.dtype)


# ----------------------------------------------------------------------------------------------
# the training run


@struct.dataclass
class PPOOutput:
    """Everything one :func:`train_ppo` run returns.

    ``policy``: trained policy params (the task's tree; zeros at pruned entries). ``log_std``: (act,)
    (box actions; (0,) for discrete). ``critic``: critic params (never masked). ``obs_stats``: the final
    observation statistics. ``metrics``: per-update curves (``(num_updates,)`` each): ``train_return``
    (mean unscaled return of the episodes that ENDED in the update's rollout; NaN if none did),
    ``episodes`` (how many ended), ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``
    (mean of (ρ − 1) − log ρ), ``clip_frac``, ``env_steps`` (cumulative), ``learning_rate``.
    """

    policy: PyTree
    log_std: jax.Array
    critic: PyTree
    obs_stats: control.ObsStats
    metrics: dict


def _permutations(key: jax.Array, config: PPOConfig) -> jax.Array:
    """``(update_epochs, n)`` uniformly random permutations of the ``n`` transitions of one update, all in
    ONE sort of random 32-bit keys (index order breaks the rare ties). ``jax.random.permutation`` sorts
    two or three times per call; on this CPU a sort of 6400 keys costs ≈ 1.5 ms, as much as two Adam
    steps on a Pendulum minibatch."""
    n = config.steps_per_update
    bits = jax.random.bits(key, (config.update_epochs, n), jnp.uint32)
    idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), bits.shape)
    return jax.lax.sort_key_val(bits, idx, dimension=1)[1]


def _schedule(config: PPOConfig):
    if config.lr_schedule == "constant":
        return config.learning_rate
    total = config.num_updates * config.update_epochs * config.num_minibatches
    lr = config.learning_rate

    def linear(count):  # lr · (1 − count / total), exactly 0 after the last step
        return lr * jnp.maximum(1.0 - count / total, 0.0)

    return linear


def _optimizer(config: PPOConfig):
    adam = optax.adam(_schedule(config), eps=ADAM_EPS)
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


@partial(jax.jit, static_argnames=("config",))
def train_ppo(
    key: jax.Array, theta0: PyTree, mask: PyTree, task: control.ControlTask, config: PPOConfig
) -> PPOOutput:
    """One masked PPO run from the policy ``theta0 ⊙ mask`` (fresh critic, log σ and Adam state), pure
    and jitted: ``task`` (a pytree with only static fields) and ``config`` (static) select the compiled
    program; ``jax.vmap`` over ``key`` (``theta0``/``mask`` broadcast or batched) trains seeds together.

    ``task`` is used AS GIVEN (apply :func:`ppo_task` first for the config's policy / normalisation
    overrides; :class:`PPOTrainer` does). Keys: ``k_critic, k_reset, k_run = split(key, 3)``; update
    ``u`` uses ``fold_in(k_run, u)`` (rollout step ``t``: ``fold_in(·, t)``; the update's minibatch
    permutations: ``fold_in(·, T)``).
    """
    env, policy = task.env, task.policy
    discrete = isinstance(env.action_space, control.Discrete)
    act_size = 0 if discrete else env.action_space.size
    n_envs, horizon = config.num_envs, config.rollout_length
    norm, clip = task.normalize_obs, task.obs_clip
    critic = make_critic(env.obs_size, config)
    opt = _optimizer(config)

    k_critic, k_reset, k_run = jax.random.split(key, 3)
    params = {
        "policy": _masked(theta0, mask),
        "log_std": jnp.full((act_size,), config.init_log_std, jnp.float32),
        "critic": networks.init_params(k_critic, critic),
    }
    opt_state = opt.init(params)
    obs0, env_state0 = jax.vmap(env.reset)(jax.random.split(k_reset, n_envs))
    stats0 = control.ObsStats.zeros(env.obs_size)

    # -- rollout -------------------------------------------------------------------------------

    def rollout(params, stats, carry, k_update):
        inv_std = control.inverse_std(stats)

        def step(c, t):
            obs, st, ep_ret = c
            k_t = jax.random.fold_in(k_update, t)
            k_act, k_step, k_new = jax.random.split(k_t, 3)
            x = control.normalize(stats, obs, clip, inv_std) if norm else obs
            out = _forward(policy, params["policy"], x)
            a = _sample(k_act, out, params["log_std"], discrete)
            logp, _ = _log_prob_entropy(out, params["log_std"], a, discrete)
            env_action = a if discrete else control.to_action(a, env.action_space, task.action_mode)
            obs2, st2, rew, term, trunc = jax.vmap(env.step_terminal)(
                jax.random.split(k_step, n_envs), st, env_action
            )
            done = term | trunc
            x2 = control.normalize(stats, obs2, clip, inv_std) if norm else obs2

            def do_reset(_):
                o, s = jax.vmap(env.reset)(jax.random.split(k_new, n_envs))

                def sel(new, old):
                    return jnp.where(done.reshape(done.shape + (1,) * (new.ndim - 1)), new, old)

                return sel(o, obs2), jax.tree_util.tree_map(sel, s, st2)

            obs_n, st_n = jax.lax.cond(jnp.any(done), do_reset, lambda _: (obs2, st2), None)
            ep_ret2 = ep_ret + rew
            trans = {
                "obs": obs,
                "x": x,
                "x_next": x2,
                "action": a,
                "logp": logp,
                "reward": rew,
                "term": term,
                "done": done,
                "ended_return": jnp.where(done, ep_ret2, 0.0),
            }
            return (obs_n, st_n, jnp.where(done, 0.0, ep_ret2)), trans

        carry, traj = jax.lax.scan(step, carry, jnp.arange(horizon))
        return carry, traj

    # -- advantages ----------------------------------------------------------------------------

    def advantages(params, traj):
        v = _forward(critic, params["critic"], traj["x"])[..., 0]  # (T, N)
        v_next = _forward(critic, params["critic"], traj["x_next"])[..., 0]
        cut = traj["term"] if config.bootstrap_truncation else traj["done"]
        reward = traj["reward"] * config.reward_scale
        delta = reward + config.gamma * jnp.where(cut, 0.0, v_next) - v
        decay = config.gamma * config.gae_lambda * (1.0 - traj["done"].astype(jnp.float32))

        def back(a_next, inp):
            d, g = inp
            a = d + g * a_next
            return a, a

        _, adv = jax.lax.scan(back, jnp.zeros((n_envs,), jnp.float32), (delta, decay), reverse=True)
        return adv, adv + v

    # -- update --------------------------------------------------------------------------------

    def loss_fn(p, mb):
        out = _forward(policy, p["policy"], mb["x"])
        logp, ent = _log_prob_entropy(out, p["log_std"], mb["action"], discrete)
        log_ratio = logp - mb["logp"]
        ratio = jnp.exp(log_ratio)
        adv = mb["adv"]
        if config.normalize_advantages:
            adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
        pg = -jnp.mean(
            jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps) * adv)
        )
        v = _forward(critic, p["critic"], mb["x"])[..., 0]
        vloss = 0.5 * jnp.mean((v - mb["target"]) ** 2)
        entropy = jnp.mean(ent)
        total = pg + config.vf_coef * vloss - config.ent_coef * entropy
        aux = {
            "policy_loss": pg,
            "value_loss": vloss,
            "entropy": entropy,
            "approx_kl": jnp.mean(ratio - 1.0 - log_ratio),
            "clip_frac": jnp.mean((jnp.abs(ratio - 1.0) > config.clip_eps).astype(jnp.float32)),
        }
        return total, aux

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def sgd_step(c, mb):
        p, o = c
        grads, aux = grad_fn(p, mb)
        grads = {**grads, "policy": _masked(grads["policy"], mask)}  # masked gradients …
        updates, o = opt.update(grads, o, p)
        p = optax.apply_updates(p, updates)
        p = {**p, "policy": _masked(p["policy"], mask)}  # … and the mask re-applied
        return (p, o), aux

    def update(c, u):
        params, opt_state, stats, env_carry = c
        k_update = jax.random.fold_in(k_run, u)
        env_carry, traj = rollout(params, stats, env_carry, k_update)
        adv, target = advantages(params, traj)
        flat = {
            "x": traj["x"],
            "action": traj["action"],
            "logp": traj["logp"],
            "adv": adv,
            "target": target,
        }
        flat = jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), flat)

        def epoch(c2, perm):
            mbs = jax.tree_util.tree_map(
                lambda a: a[perm].reshape(config.num_minibatches, config.minibatch_size, *a.shape[1:]), flat
            )
            return jax.lax.scan(sgd_step, c2, mbs)

        (params, opt_state), aux = jax.lax.scan(
            epoch, (params, opt_state), _permutations(jax.random.fold_in(k_update, horizon), config)
        )
        if norm:
            stats = control.merge_stats(stats, control.batch_stats(traj["obs"]))
        n_done = jnp.sum(traj["done"])
        metrics = {k: jnp.mean(v) for k, v in aux.items()}
        metrics["train_return"] = jnp.where(
            n_done > 0, jnp.sum(traj["ended_return"]) / jnp.maximum(n_done, 1), jnp.nan
        )
        metrics["episodes"] = n_done.astype(jnp.float32)
        metrics["env_steps"] = ((u + 1) * config.steps_per_update).astype(jnp.float32)
        step_count = (u + 1) * config.update_epochs * config.num_minibatches
        sched = _schedule(config)
        metrics["learning_rate"] = jnp.asarray(sched(step_count) if callable(sched) else sched, jnp.float32)
        return (params, opt_state, stats, env_carry), metrics

    env_carry = (obs0, env_state0, jnp.zeros((n_envs,), jnp.float32))
    (params, _, stats, _), metrics = jax.lax.scan(
        update, (params, opt_state, stats0, env_carry), jnp.arange(config.num_updates)
    )
    return PPOOutput(
        policy=params["policy"],
        log_std=params["log_std"],
        critic=params["critic"],
        obs_stats=stats,
        metrics=metrics,
    )


# ----------------------------------------------------------------------------------------------
# the Trainer


@jax.jit
def _evaluate(task: control.ControlTask, stats: control.ObsStats, params: PyTree) -> dict:
    return task.evaluate(stats, params)


class PPOTrainer:
    """Masked PPO over a :class:`~es_lottery.tasks.control.ControlTask` (``Trainer`` protocol).

    * ``init_params(key)`` — the task's policy θ₀ (``ControlTask.init_params``), the same draw ES uses.
    * ``train(key, theta0, mask)`` — :func:`train_ppo` from ``theta0 ⊙ mask`` (fresh critic, log σ and
      Adam state at every call), then ``ControlTask.evaluate`` of the deterministic policy with the final
      observation statistics (frozen) on the task's fixed test episodes. ``TrainResult``:
      ``final_params`` = the trained policy (zeros at pruned entries), ``std_params=None``,
      ``eval_score`` = mean test return, ``task_state`` = the final ``ObsStats``, ``metrics`` = the
      per-update curves of :class:`PPOOutput` plus ``test_*`` scalars (return, return_std, …),
      ``final_log_std`` (box actions) and ``env_steps_total``.
    * :meth:`train_full` — the same, returning the :class:`PPOOutput` (critic and log σ included) and the
      test metrics.

    Same key → bit-identical result, so a PPO-IMP run resumes at level granularity (a finished level is
    skipped; an unfinished one is retrained from its key).
    """

    name = "ppo"
    provides_std = False

    def __init__(self, task: control.ControlTask, config: PPOConfig = PPOConfig()):
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
        self.config = config
        self.task = ppo_task(task, config)

    @classmethod
    def from_task(cls, task: control.ControlTask, config: PPOConfig = PPOConfig()) -> PPOTrainer:
        """The trainer for ``task`` (e.g. ``control.control_task_from_config(cfg["env"])``)."""
        return cls(task, config)

    def init_params(self, key: jax.Array) -> PyTree:
        return self.task.init_params(key)

    def train_full(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> tuple[PPOOutput, dict]:
        masks_lib.check_congruent(theta0, mask)
        out = train_ppo(key, theta0, mask, self.task, self.config)
        test = _evaluate(self.task, out.obs_stats, out.policy)
        return out, test

    def train(self, key: jax.Array, theta0: PyTree, mask: PyTree) -> TrainResult:
        out, test = self.train_full(key, theta0, mask)
        metrics = dict(out.metrics)
        metrics.update({f"test_{k}": v for k, v in test.items()})
        metrics["env_steps_total"] = float(self.config.env_steps)
        if out.log_std.shape[0]:
            metrics["final_log_std"] = out.log_std
        return TrainResult(
            final_params=out.policy,
            std_params=None,
            metrics=metrics,
            eval_score=test["return"],
            task_state=out.obs_stats,
        )
