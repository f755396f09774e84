"""The searches: the strong-ticket GA (``ga_slt``), the evosax adapter (``es``) and NeTS (``nets``).

Every search is a set of pure functions of explicit keys: ``init`` → state, ``step`` → (state, metrics),
``advance`` continues a state; ``run`` is a whole fresh search (``ga_slt.run``, ``nets.run``, ``es.run``;
``es.ask`` / ``es.tell`` for a loop of your own). Names load lazily.
"""

from es_lottery._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "es": "es_lottery.search.es",
        "ga_slt": "es_lottery.search.ga_slt",
        "nets": "es_lottery.search.nets",
        "paper_settings": "es_lottery.search.paper_settings",
    },
)
