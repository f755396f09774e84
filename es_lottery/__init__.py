"""es_lottery: JAX-accelerated evolutionary pruning (strong tickets by GA, ES lottery tickets, NeTS)."""

__version__ = "0.1.0"
