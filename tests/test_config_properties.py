"""Property tests of the three config loaders (hypothesis): a field given a random value of a plausible type
either loads or fails with a ``ValueError`` that names the field; random junk anywhere never raises anything
but a ``ValueError`` (what the command line prints as one line, with no traceback)."""

from __future__ import annotations

import copy

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from es_lottery.experiments import config as config_lib  # noqa: E402
from es_lottery.experiments import imp, nets, slt  # noqa: E402

BASES = {
    "slt": (
        slt,
        slt.SLTConfig,
        {
            "name": "p",
            "dataset": "moons",
            "networks": {"A": {"sizes": [2, 8, 2]}},
            "variants": ["ga"],
            "seeds": 2,
        },
    ),
    "imp": (
        imp,
        imp.IMPExperiment,
        {
            "name": "p",
            "dataset": "digits",
            "network": {"name": "mlp", "sizes": [64, 8, 10]},
            "trainer": {"type": "es", "algorithm": "SNES", "population_size": 8, "num_generations": 4},
            "imp": {"num_levels": 2},
            "criteria": ["magnitude"],
            "seeds": 1,
        },
    ),
    "nets": (
        nets,
        nets.NeTSExperiment,
        {
            "name": "p",
            "dataset": "xor",
            "network": {"name": "mlp", "sizes": [2, 4, 1]},
            "methods": ["nets"],
            "seeds": 1,
        },
    ),
}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["mlp", "ga", "moons", "../x", "a/b", "..", "yes", "no", "1e3", "k", "snr"]),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8) | st.sampled_from(["sizes"]), inner)
    ),
    max_leaves=12,
)
TYPED = st.one_of(
    st.integers(-3, 40),
    st.floats(-2, 40, allow_nan=False),
    st.booleans(),
    st.sampled_from(["moons", "digits", "xor", "p2", "mlp", "ga", "adaptive_ab", "magnitude", "nets"]),
    st.lists(st.integers(1, 12), min_size=0, max_size=4),
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse(kind: str, data):
    mod, _, _ = BASES[kind]
    return mod.parse_config(data)


@FAST
@given(kind=st.sampled_from(sorted(BASES)), data=st.data(), value=TYPED)
def test_a_well_typed_field_loads_or_its_error_names_it(kind, data, value):
    _, cls, base = BASES[kind]
    key = data.draw(st.sampled_from(config_lib.yaml_fields(cls)))
    cfg = {**copy.deepcopy(base), key: value}
    try:
        _parse(kind, cfg)
    except ValueError as err:
        message = str(err)
        assert key in message or any(k in message for k in cfg), message
        assert "\n" not in message.strip(), message
    except Exception as err:  # pragma: no cover - the failure being tested for
        pytest.fail(f"{kind}.{key}={value!r}: {type(err).__name__}: {err}")


@FAST
@given(kind=st.sampled_from(sorted(BASES)), data=st.data(), junk=JUNK)
def test_junk_in_a_field_is_a_value_error_naming_it(kind, data, junk):
    _, cls, base = BASES[kind]
    key = data.draw(st.sampled_from(config_lib.yaml_fields(cls)))
    try:
        _parse(kind, {**copy.deepcopy(base), key: junk})
    except ValueError as err:
        assert key in str(err) or isinstance(err, config_lib.ConfigError), str(err)
    except Exception as err:  # pragma: no cover
        pytest.fail(f"{kind}.{key}={junk!r}: {type(err).__name__}: {err}")


@FAST
@given(kind=st.sampled_from(sorted(BASES)), junk=JUNK)
def test_a_whole_junk_config_is_a_value_error(kind, junk):
    try:
        _parse(kind, junk)
    except ValueError:
        pass
    except Exception as err:  # pragma: no cover
        pytest.fail(f"{kind} {junk!r}: {type(err).__name__}: {err}")


@FAST
@given(seeds=st.floats(0.01, 50).filter(lambda x: not float(x).is_integer()))
def test_a_fractional_seed_count_is_never_truncated(seeds):
    with pytest.raises(config_lib.ConfigError, match="seeds: expected an integer"):
        slt.parse_config({**BASES["slt"][2], "seeds": seeds})


@FAST
@given(flag=st.sampled_from(["no", "yes", "false", "true", "0", "1", 0, 1, "off"]))
def test_a_bool_field_takes_true_or_false_only(flag):
    with pytest.raises(config_lib.ConfigError, match="backprop: expected true or false"):
        slt.parse_config({**BASES["slt"][2], "backprop": flag})
