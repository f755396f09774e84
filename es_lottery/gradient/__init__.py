"""Gradient baselines: edge-popup on frozen random MLPs and the tuned sklearn-style backprop MLP."""

from es_lottery.gradient import backprop, edge_popup

__all__ = ["backprop", "edge_popup"]
