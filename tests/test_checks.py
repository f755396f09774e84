"""The shared validators: accepted values, rejected values, and messages that name the field."""

import numpy as np
import pytest

from es_lottery import _checks as c


@pytest.mark.parametrize("value", [0, 5, np.int32(3), np.int64(7)])
def test_check_int_accepts_integers_in_range(value):
    assert c.check_int(value, "n", 0, 10) == int(value)
    assert type(c.check_int(value, "n", 0)) is int


@pytest.mark.parametrize("value", [True, 1.0, "3", None, -1, 11, np.float32(2)])
def test_check_int_rejects_and_names_field(value):
    with pytest.raises(ValueError, match=r"my_field must be an integer in \[0, 10\]"):
        c.check_int(value, "my_field", 0, 10)


def test_check_int_allow_none():
    assert c.check_int(None, "n", 1, allow_none=True) is None
    with pytest.raises(ValueError, match="n must be an integer ≥ 1 or None"):
        c.check_int(0, "n", 1, allow_none=True)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0.0, True),
        (1.0, True),
        (0.5, True),
        (np.float32(0.25), True),
        (1, True),
        (-0.01, False),
        (1.01, False),
        (float("nan"), False),
        (True, False),
        ("0.5", False),
        (None, False),
    ],
)
def test_check_rate(value, ok):
    if ok:
        assert c.check_rate(value, "rate") == float(value)
    else:
        with pytest.raises(ValueError, match="rate must be a finite number ≥ 0 and ≤ 1"):
            c.check_rate(value, "rate")


def test_open_bounds_exclude_the_endpoint():
    assert c.check_number(0.999, "m", 0.0, 1.0, hi_open=True) == 0.999
    with pytest.raises(ValueError, match="m must be a finite number ≥ 0 and < 1"):
        c.check_number(1.0, "m", 0.0, 1.0, hi_open=True)
    with pytest.raises(ValueError, match="s must be a finite number > 0"):
        c.check_positive(0.0, "s")
    with pytest.raises(ValueError, match="s must be a finite number > 0"):
        c.check_positive(float("inf"), "s")
    assert c.check_positive(1e-9, "s") == 1e-9


def test_check_bool_and_choice():
    assert c.check_bool(np.bool_(True), "flag") is True
    with pytest.raises(ValueError, match="flag must be a bool"):
        c.check_bool(1, "flag")
    assert c.check_choice("b", ("a", "b"), "variant") == "b"
    with pytest.raises(ValueError, match="unknown variant 'z'; allowed: a, b"):
        c.check_choice("z", ("a", "b"), "variant")


def test_check_xy_shapes_and_labels():
    x, y = np.zeros((5, 3)), np.array([0, 1, 2, 0, 1])
    c.check_xy(x, y, 3, 3)
    c.check_xy(np.zeros((5, 1, 3)), y, 3, 3, flatten=True)  # images flatten to the input width
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        c.check_xy(np.zeros((5, 1, 3)), y, 3, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\)"):
        c.check_xy(x, y, 4, 3)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\)"):
        c.check_xy(x, y[:4], 3, 3)
    with pytest.raises(ValueError, match=r"labels y must be in 0\.\.1 \(2 classes\), got range 0\.\.2"):
        c.check_xy(x, y, 3, 2)
    with pytest.raises(ValueError, match="integer labels"):
        c.check_xy(x, y.astype(float), 3, 3)
    with pytest.raises(ValueError, match="at least one sample"):
        c.check_xy(np.zeros((0, 3)), np.zeros((0,), int), 3, 3)
