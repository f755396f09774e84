"""Networks and initialisers checked against hand-counted sizes, numpy forward passes and the init laws."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from es_lottery import masks as M
from es_lottery import networks as N

# ----------------------------------------------------------------------------------------------
# sizes


def test_paper_cnn_param_counts():
    params = N.init_params(jax.random.key(0), N.make_network("paper_cnn"))
    # conv 5x5x1x8 + 8, conv 5x5x8x16 + 16, dense (7*7*16)x10 + 10
    prunable = 5 * 5 * 1 * 8 + 5 * 5 * 8 * 16 + 7 * 7 * 16 * 10
    assert prunable == 11_240
    assert N.num_prunable(params) == 11_240
    assert N.num_params(params) == prunable + 8 + 16 + 10 == 11_274
    shapes = jax.tree_util.tree_map(np.shape, params)
    assert shapes["conv_0"]["kernel"] == (5, 5, 1, 8) and shapes["conv_1"]["kernel"] == (5, 5, 8, 16)
    assert shapes["dense_0"]["kernel"] == (784, 10)


def test_lenet_300_100_param_counts():
    module = N.make_network("lenet_300_100")
    params = N.init_params(jax.random.key(0), module)
    assert N.num_params(params) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert N.num_prunable(params) == 784 * 300 + 300 * 100 + 100 * 10
    assert tuple(module.sizes) == (784, 300, 100, 10)


def test_mlp_2_20_2_counts():
    params = N.init_params(jax.random.key(0), N.make_network("mlp", sizes=[2, 20, 2]))
    assert N.num_prunable(params) == 2 * 20 + 20 * 2 == 80
    assert N.num_params(params) == 80 + 20 + 2
    assert set(params) == {"dense_0", "dense_1"}


# ----------------------------------------------------------------------------------------------
# forward passes against numpy


def np_mlp(params, x, hidden="relu", output="none"):
    act = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh, "none": lambda z: z}
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    n_layers = len(params)
    for i in range(n_layers):
        w, b = (np.asarray(params[f"dense_{i}"][k], np.float64) for k in ("kernel", "bias"))
        h = act[output if i == n_layers - 1 else hidden](h @ w + b)
    return h


def np_conv_same(x, k, b):
    """Cross-correlation (as flax/XLA), SAME padding, stride 1: x (B, H, W, I), k (kh, kw, I, O)."""
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((*x.shape[:3], k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwi,io->bhwo", xp[:, i : i + x.shape[1], j : j + x.shape[2], :], k[i, j])
    return out + b


def np_pool2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_cnn(params, x):
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    z = np_pool2(
        np.maximum(np_conv_same(np.asarray(x, np.float64), p["conv_0"]["kernel"], p["conv_0"]["bias"]), 0)
    )
    z = np_pool2(np.maximum(np_conv_same(z, p["conv_1"]["kernel"], p["conv_1"]["bias"]), 0))
    return z.reshape(len(z), -1) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"]


@pytest.mark.parametrize(
    ("sizes", "hidden", "output"),
    [((2, 20, 2), "relu", "none"), ((3, 7, 5, 4), "tanh", "tanh"), ((5, 6, 1), "relu", "tanh")],
)
def test_mlp_forward_matches_numpy(sizes, hidden, output):
    module = N.make_network("mlp", sizes=list(sizes), hidden_activation=hidden, output_activation=output)
    params = N.init_params(jax.random.key(1), module)
    x = np.random.default_rng(0).standard_normal((9, sizes[0])).astype(np.float32)
    out = np.asarray(N.apply(module, params, x))
    assert out.shape == (9, sizes[-1])
    np.testing.assert_allclose(out, np_mlp(params, x, hidden, output), rtol=1e-5, atol=1e-6)


def test_mlp_flattens_image_inputs():
    module = N.make_network("mlp", sizes=[784, 12, 10])
    params = N.init_params(jax.random.key(2), module)
    x = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)
    out = np.asarray(N.apply(module, params, x))
    np.testing.assert_allclose(out, np.asarray(N.apply(module, params, x.reshape(4, 784))), rtol=1e-6)
    np.testing.assert_allclose(out, np_mlp(params, x), rtol=1e-4, atol=1e-5)


def test_paper_cnn_forward_matches_numpy():
    module = N.make_network("paper_cnn")
    params = N.init_params(jax.random.key(3), module)
    x = np.random.default_rng(2).random((3, 28, 28, 1)).astype(np.float32)
    out = np.asarray(N.apply(module, params, x))
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out, np_cnn(params, x), rtol=1e-4, atol=1e-5)


def test_masked_forward_equals_forward_of_zeroed_weights():
    module = N.make_network("mlp", sizes=[3, 8, 2])
    params = N.init_params(jax.random.key(4), module)
    mask = M.random_mask(jax.random.key(5), 0.4, params)
    x = np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32)
    zeroed = jax.tree_util.tree_map(lambda p, m: np.where(np.asarray(m), np.asarray(p), 0.0), params, mask)
    np.testing.assert_allclose(
        np.asarray(N.apply(module, M.apply(params, mask), x)), np_mlp(zeroed, x), rtol=1e-5, atol=1e-6
    )


# ----------------------------------------------------------------------------------------------
# initialisers


def _big_mlp(init, kept_fraction=1.0):
    module = N.make_network("mlp", sizes=[1000, 400, 10], weight_init=init, kept_fraction=kept_fraction)
    return N.init_params(jax.random.key(7), module)


def test_uniform_init_weights_and_biases_in_unit_interval():
    params = _big_mlp("uniform")
    for layer in ("dense_0", "dense_1"):
        for leaf in ("kernel", "bias"):
            v = np.asarray(params[layer][leaf])
            assert v.min() >= -1.0 and v.max() <= 1.0
    w, b = np.asarray(params["dense_0"]["kernel"]), np.asarray(params["dense_0"]["bias"])
    assert np.count_nonzero(b) > 390  # biases are drawn too, not zeros
    # U[-1, 1]: mean 0, variance 1/3, and it fills the interval
    assert abs(w.mean()) < 0.01 and abs(w.var() - 1 / 3) < 0.01
    assert w.min() < -0.99 and w.max() > 0.99
    assert b.min() < -0.8 and b.max() > 0.8


@pytest.mark.parametrize("kept_fraction", [1.0, 0.25])
def test_kaiming_normal_std(kept_fraction):
    params = _big_mlp("kaiming_normal", kept_fraction)
    w0, w1 = np.asarray(params["dense_0"]["kernel"]), np.asarray(params["dense_1"]["kernel"])
    # 400 000 samples: the sample std is within ~0.1 % of the truth; allow 3 %
    assert abs(w0.mean()) < 0.01 * np.sqrt(2 / 1000)
    assert w0.std() == pytest.approx(np.sqrt(2.0 / (1000 * kept_fraction)), rel=0.03)
    assert w1.std() == pytest.approx(np.sqrt(2.0 / (400 * kept_fraction)), rel=0.05)
    assert not np.any(params["dense_0"]["bias"]) and not np.any(params["dense_1"]["bias"])


def test_kaiming_normal_conv_fan_in_is_kh_kw_in():
    params = N.init_params(jax.random.key(8), N.make_network("paper_cnn", weight_init="kaiming_normal"))
    k1 = np.asarray(params["conv_1"]["kernel"])  # fan_in 5*5*8 = 200, 3200 samples
    assert k1.std() == pytest.approx(np.sqrt(2.0 / 200), rel=0.06)
    d = np.asarray(params["dense_0"]["kernel"])  # fan_in 784, 7840 samples
    assert d.std() == pytest.approx(np.sqrt(2.0 / 784), rel=0.05)


@pytest.mark.parametrize("kept_fraction", [1.0, 0.5])
def test_signed_kaiming_constant_is_exactly_plus_minus(kept_fraction):
    params = _big_mlp("signed_kaiming_constant", kept_fraction)
    for layer, fan_in in (("dense_0", 1000), ("dense_1", 400)):
        w = np.asarray(params[layer]["kernel"])
        c = np.float32(np.sqrt(2.0 / (fan_in * kept_fraction)))
        np.testing.assert_array_equal(np.abs(w), np.full(w.shape, c))
        assert 0.45 < np.mean(w > 0) < 0.55
        assert not np.any(params[layer]["bias"])
    cnn = N.init_params(jax.random.key(9), N.make_network("paper_cnn", weight_init="signed_kaiming_constant"))
    k0 = np.asarray(cnn["conv_0"]["kernel"])
    np.testing.assert_array_equal(np.abs(k0), np.float32(np.sqrt(2.0 / 25)))


def test_lecun_normal_variance():
    params = _big_mlp("lecun_normal")
    assert np.asarray(params["dense_0"]["kernel"]).std() == pytest.approx(np.sqrt(1 / 1000), rel=0.03)
    assert not np.any(params["dense_0"]["bias"])


def test_kept_fraction_does_not_affect_uniform():
    a = np.asarray(_big_mlp("uniform", 1.0)["dense_0"]["kernel"])
    b = np.asarray(_big_mlp("uniform", 0.3)["dense_0"]["kernel"])
    np.testing.assert_array_equal(a, b)


def test_different_keys_give_different_params():
    module = N.make_network("mlp", sizes=[2, 20, 2])
    a = N.init_params(jax.random.key(0), module)["dense_0"]["kernel"]
    b = N.init_params(jax.random.key(1), module)["dense_0"]["kernel"]
    assert not np.array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------------
# bad input


def test_unknown_initialiser_names_weight_init():
    with pytest.raises(ValueError, match="weight_init") as err:
        N.make_network("mlp", sizes=[2, 3, 2], weight_init="xavier")
    assert "xavier" in str(err.value)
    with pytest.raises(ValueError, match="weight_init"):
        N.make_network("paper_cnn", weight_init="he")
    with pytest.raises(ValueError, match="weight_init"):
        N.initializers("kaiming")


def test_unknown_network_names_network():
    with pytest.raises(ValueError, match="network") as err:
        N.make_network("resnet18")
    assert "resnet18" in str(err.value)


def test_mlp_field_errors():
    with pytest.raises(ValueError, match="sizes"):
        N.make_network("mlp")
    with pytest.raises(ValueError, match="sizes"):
        N.make_network("mlp", sizes=[3])
    with pytest.raises(ValueError, match="sizes"):
        N.make_network("mlp", sizes=[3, 0, 2])
    with pytest.raises(ValueError, match="hidden_activation"):
        N.make_network("mlp", sizes=[2, 3, 2], hidden_activation="gelu")
    with pytest.raises(ValueError, match="output_activation"):
        N.make_network("mlp", sizes=[2, 3, 2], output_activation="softmax")


@pytest.mark.parametrize("bad", [0.0, 1.5, float("nan")])
def test_bad_kept_fraction_names_the_field(bad):
    with pytest.raises(ValueError, match="kept_fraction"):
        N.make_network("mlp", sizes=[2, 3, 2], weight_init="kaiming_normal", kept_fraction=bad)


def test_wrong_input_shape_raises_naming_input():
    mlp = N.make_network("mlp", sizes=[2, 4, 2])
    params = N.init_params(jax.random.key(0), mlp)
    with pytest.raises(ValueError, match="input"):
        N.apply(mlp, params, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="input"):
        N.apply(mlp, params, np.zeros((2,), np.float32))  # unbatched
    cnn = N.make_network("paper_cnn")
    cparams = N.init_params(jax.random.key(0), cnn)
    with pytest.raises(ValueError, match="input"):
        N.apply(cnn, cparams, np.zeros((2, 784), np.float32))
    with pytest.raises(ValueError, match="input"):
        N.apply(cnn, cparams, np.zeros((2, 28, 28, 3), np.float32))
