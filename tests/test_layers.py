"""models/layers.py: positions, masks, numerics under low precision, recurrent cells."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import layers


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and restores float32 afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def test_sinusoidal_encoding_values():
    enc = layers.sinusoidal_encoding(tf.constant([0, 1, 2]), 4).numpy()
    assert enc.shape == (3, 4) and enc.dtype == np.float32
    # dim 4: timescales 1 and 1e-4; first half sin, second half cos.
    for pos in range(3):
        expected = [math.sin(pos), math.sin(pos * 1e-4), math.cos(pos), math.cos(pos * 1e-4)]
        np.testing.assert_allclose(enc[pos], expected, atol=1e-6)
    batched = layers.sinusoidal_encoding(tf.constant([[2], [0]]), 4).numpy()
    np.testing.assert_allclose(batched[:, 0], enc[[2, 0]], atol=1e-7)


def test_masks_and_shift_right():
    causal = layers.causal_mask(3).numpy()
    assert causal.shape == (1, 1, 3, 3)
    assert causal[0, 0].tolist() == [[True, False, False], [True, True, False],
                                     [True, True, True]]
    padding = layers.padding_mask(tf.constant([[True, False]])).numpy()
    assert padding.shape == (1, 1, 1, 2)
    shifted = layers.shift_right(tf.constant([[5, 6, 1, 0]]), bos_id=3).numpy()
    assert shifted.tolist() == [[3, 5, 6, 1]]


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_layer_norm_statistics_survive_low_precision(policy, name):
    policy(name)
    norm = layers.LayerNorm(8)
    # Squares of 300 overflow float16 (max 65504): float32 statistics must be used.
    x = tf.constant(np.linspace(-300, 300, 8, dtype=np.float32)[None])
    y = norm(x)
    assert y.dtype == tf.as_dtype(name.split("_")[1])
    y = tf.cast(y, tf.float32).numpy()
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.mean(), 0.0, atol=2e-2)
    np.testing.assert_allclose(y.std(), 1.0, atol=2e-2)


def test_attention_ignores_masked_keys():
    attention = layers.MultiHeadAttention(8, 2)
    rng = np.random.default_rng(0)
    query = tf.constant(rng.normal(size=[2, 3, 8]), tf.float32)
    memory = rng.normal(size=[2, 4, 8]).astype(np.float32)
    mask = layers.padding_mask(tf.constant([[True, True, False, False]] * 2))
    out = attention(query, tf.constant(memory), mask)
    memory[:, 2:] = 100.0  # change only the masked keys
    changed = attention(query, tf.constant(memory), mask)
    np.testing.assert_allclose(out.numpy(), changed.numpy(), atol=1e-6)
    memory[:, 1] = 100.0  # a visible key: must matter
    assert np.abs(attention(query, tf.constant(memory), mask).numpy() - out.numpy()).max() > 1e-2


def test_fully_masked_attention_is_finite_in_float16(policy):
    policy("mixed_float16")
    attention = layers.MultiHeadAttention(8, 2)
    x = tf.ones([1, 2, 8])
    out = attention(x, x, tf.zeros([1, 1, 1, 2], tf.bool))
    assert out.dtype == tf.float16
    assert np.isfinite(out.numpy()).all()


def _keras_cell_outputs(keras_cell, weights, x, state):
    keras_cell.build((None, x.shape[-1]))
    keras_cell.set_weights(weights)
    out, new_state = keras_cell(x, state)
    return out.numpy(), [s.numpy() for s in new_state]


def test_lstm_cell_matches_keras():
    rng = np.random.default_rng(1)
    cell = layers.LSTMCell(3, 5)
    x = tf.constant(rng.normal(size=[2, 3]), tf.float32)
    state = (tf.constant(rng.normal(size=[2, 5]), tf.float32),
             tf.constant(rng.normal(size=[2, 5]), tf.float32))
    out, (h, c) = cell.step(cell.project_inputs(x), state)
    weights = [cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy()]
    ref_out, (ref_h, ref_c) = _keras_cell_outputs(keras.layers.LSTMCell(5), weights, x,
                                                  list(state))
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
    np.testing.assert_allclose(c.numpy(), ref_c, atol=1e-5)
    # Forget-gate bias starts at 1.
    assert cell.bias.numpy()[5:10].tolist() == [1.0] * 5


def test_gru_cell_matches_keras():
    rng = np.random.default_rng(2)
    cell = layers.GRUCell(3, 4)
    for variable in (cell.bias, cell.recurrent_bias):
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    x = tf.constant(rng.normal(size=[2, 3]), tf.float32)
    h = tf.constant(rng.normal(size=[2, 4]), tf.float32)
    out, _ = cell.step(cell.project_inputs(x), (h,))
    weights = [cell.kernel.numpy(), cell.recurrent_kernel.numpy(),
               np.stack([cell.bias.numpy(), cell.recurrent_bias.numpy()])]
    ref_out, _ = _keras_cell_outputs(keras.layers.GRUCell(4, reset_after=True), weights, x, h)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)


def test_make_cell_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'rnn'"):
        layers.make_cell("rnn", 3, 4, name="x")


def test_dropout_rate_scale_and_inference_identity():
    x = tf.ones([1000, 1000])
    dropout = layers.Dropout(0.1, seed=7)
    y = dropout(x, training=True).numpy()
    dropped = float(np.mean(y == 0.0))
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the standard error is 0.0003
    np.testing.assert_allclose(np.unique(y), [0.0, 1.0 / (1.0 - 6554 / 65536)], rtol=1e-6)
    assert abs(float(np.mean(y)) - 1.0) < 0.005  # inverted dropout keeps the mean
    assert np.array_equal(dropout(x, training=False).numpy(), x.numpy())
    assert np.array_equal(layers.Dropout(0.0)(x, training=True).numpy(), x.numpy())


def test_dropout_stream_is_seeded_advances_and_compiles_with_xla():
    x = tf.ones([3, 5, 7])  # odd size: the last 16-bit half word is unused
    first, second = layers.Dropout(0.5, seed=3), layers.Dropout(0.5, seed=3)
    a, b = first(x, training=True), first(x, training=True)
    assert not np.array_equal(a.numpy(), b.numpy())  # the state advances per call
    assert np.array_equal(second(x, training=True).numpy(), a.numpy())  # same seed, same mask
    compiled = tf.function(lambda t: second(t, training=True), jit_compile=True)
    assert np.array_equal(compiled(x).numpy(), b.numpy())
    with pytest.raises(ValueError, match="dropout rate"):
        layers.Dropout(1.0)
