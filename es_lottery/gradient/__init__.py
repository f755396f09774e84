"""Gradient baselines: edge-popup on frozen random MLPs, the tuned sklearn-style backprop MLP, and PPO for
control tasks. Names load lazily (importing the package imports none of them)."""

from es_lottery._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "backprop": "es_lottery.gradient.backprop",
        "edge_popup": "es_lottery.gradient.edge_popup",
        "ppo": "es_lottery.gradient.ppo",
    },
)
