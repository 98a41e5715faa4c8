"""models/losses.py: sums over real tokens, against hand computations."""

import math

import numpy as np
import pytest
import tensorflow as tf

import models
from models import losses

# One sentence of three positions over a vocabulary of 3.
LOGITS = np.array([[[2.0, 0.0, -1.0],
                    [0.5, 1.5, 0.0],
                    [9.0, -9.0, 3.0]]], np.float32)
TARGETS = np.array([[0, 1, 0]], np.int32)  # all real when pad_id=2


def _log_softmax(row):
    row = np.asarray(row, np.float64)
    return row - math.log(np.exp(row).sum())


def test_cross_entropy_matches_hand_computation_and_skips_padding():
    targets = np.array([[2, 1, 0]], np.int32)  # pad_id=0 -> third position ignored
    loss_sum, count = losses.cross_entropy_sums(LOGITS, targets, pad_id=0)
    expected = -_log_softmax(LOGITS[0, 0])[2] - _log_softmax(LOGITS[0, 1])[1]
    assert loss_sum.dtype == tf.float32 and count.dtype == tf.float32
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)


def test_cross_entropy_pad_id_is_configurable():
    loss_sum, count = losses.cross_entropy_sums(LOGITS, TARGETS, pad_id=2)
    expected = sum(-_log_softmax(LOGITS[0, t])[TARGETS[0, t]] for t in range(3))
    assert float(count) == 3.0
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)


def test_label_smoothing_value():
    eps = 0.1
    targets = np.array([[2, 1, 0]], np.int32)
    loss_sum, count = losses.cross_entropy_sums(LOGITS, targets, pad_id=0,
                                                label_smoothing=eps)
    expected = 0.0
    for t in range(2):
        log_p = _log_softmax(LOGITS[0, t])
        smoothed = np.full(3, eps / 3)
        smoothed[targets[0, t]] += 1.0 - eps
        expected += -(smoothed * log_p).sum()
    assert float(count) == 2.0
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-6)
    plain, _ = losses.cross_entropy_sums(LOGITS, targets, pad_id=0)
    assert abs(float(loss_sum) - float(plain)) > 0.01


def test_sums_add_up_across_splits_of_the_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=[4, 5, 7]).astype(np.float32)
    targets = rng.integers(0, 7, size=[4, 5]).astype(np.int32)
    whole = losses.cross_entropy_sums(logits, targets, label_smoothing=0.2)
    halves = [losses.cross_entropy_sums(logits[i:i + 2], targets[i:i + 2],
                                        label_smoothing=0.2) for i in (0, 2)]
    np.testing.assert_allclose(float(whole[0]), sum(float(h[0]) for h in halves), rtol=1e-5)
    assert float(whole[1]) == sum(float(h[1]) for h in halves) == float((targets != 0).sum())


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_logits_give_float32_sums(dtype):
    targets = np.array([[2, 1, 0]], np.int32)
    loss_sum, count = losses.cross_entropy_sums(tf.cast(LOGITS, dtype), targets,
                                                label_smoothing=0.1)
    reference, _ = losses.cross_entropy_sums(LOGITS, targets, label_smoothing=0.1)
    assert loss_sum.dtype == tf.float32 and count.dtype == tf.float32
    np.testing.assert_allclose(float(loss_sum), float(reference), rtol=2e-2)


def test_accuracy_sums_count_only_real_tokens():
    targets = np.array([[0, 2, 0]], np.int32)  # argmaxes are 0, 1, 0; pad_id=0
    correct, count = losses.accuracy_sums(LOGITS, targets, pad_id=0)
    assert (float(correct), float(count)) == (0.0, 1.0)
    correct, count = losses.accuracy_sums(LOGITS, np.array([[0, 1, 0]], np.int32), pad_id=2)
    assert (float(correct), float(count)) == (3.0, 3.0)


def _reference_sums(logits, targets, *, pad_id, eps):
    """The textbook formula, differentiated by autodiff."""
    log_p = tf.nn.log_softmax(logits)
    vocab = logits.shape[-1]
    smoothed = tf.one_hot(targets, vocab) * (1.0 - eps) + eps / vocab
    weights = tf.cast(targets != pad_id, tf.float32)
    return tf.reduce_sum(-tf.reduce_sum(smoothed * log_p, -1) * weights)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_gradient_equals_autodiff_of_the_textbook_formula(eps):
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=[3, 6, 11]).astype(np.float32) * 3)
    targets = tf.constant(rng.integers(0, 11, size=[3, 6]).astype(np.int32))
    upstream = 0.7  # a non-unit upstream gradient must scale the result
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = losses.cross_entropy_sums(logits, targets, pad_id=0, label_smoothing=eps)[0]
        reference = _reference_sums(logits, targets, pad_id=0, eps=eps)
        ours_scaled, reference_scaled = ours * upstream, reference * upstream
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    ours_grad = tape.gradient(ours_scaled, logits).numpy()
    reference_grad = tape.gradient(reference_scaled, logits).numpy()
    np.testing.assert_allclose(ours_grad, reference_grad, atol=1e-6)
    assert np.all(ours_grad[targets.numpy() == 0] == 0.0)  # padding gets no gradient


def test_underflowing_gold_probability_gives_the_exact_loss():
    # p(gold) = exp(-200) underflows float32; the loss must still be 200 + log(1 + e^-200).
    logits = np.array([[[200.0, 0.0, 0.0]]], np.float32)
    targets = np.array([[2]], np.int32)
    loss_sum, _ = losses.cross_entropy_sums(logits, targets, pad_id=0)
    np.testing.assert_allclose(float(loss_sum), 200.0, rtol=1e-6)
    smoothed, _ = losses.cross_entropy_sums(logits, targets, pad_id=0, label_smoothing=0.3)
    expected = float(_reference_sums(tf.constant(logits), tf.constant(targets), pad_id=0,
                                     eps=0.3))
    np.testing.assert_allclose(float(smoothed), expected, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_projected_loss_and_gradients_equal_the_unfused_projection(eps, with_bias):
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=[3, 5, 7]).astype(np.float32))
    weights = tf.constant(rng.normal(size=[13, 7]).astype(np.float32))
    bias = tf.constant(rng.normal(size=[13]).astype(np.float32)) if with_bias else None
    targets = rng.integers(1, 13, size=[3, 5]).astype(np.int32)
    targets[0, 3:] = 0  # padding
    upstream = 0.7
    params = [x, weights] + ([bias] if with_bias else [])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        logits = tf.einsum("btd,vd->btv", x, weights) + (0.0 if bias is None else bias)
        reference, reference_count = losses.cross_entropy_sums(
            logits, targets, pad_id=0, label_smoothing=eps)
        fused, count = losses.projected_cross_entropy_sums(
            x, weights, targets, bias=bias, pad_id=0, label_smoothing=eps)
        reference_scaled, fused_scaled = reference * upstream, fused * upstream
    assert float(count) == float(reference_count) == 13.0
    np.testing.assert_allclose(float(fused), float(reference), rtol=1e-5)
    for ours, theirs in zip(tape.gradient(fused_scaled, params),
                            tape.gradient(reference_scaled, params)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-5)
    d_x = tape.gradient(fused_scaled, x).numpy()
    assert np.all(d_x[0, 3:] == 0.0) and np.any(d_x[0, :3] != 0.0)  # padding gets none


def test_projected_loss_takes_low_precision_inputs_and_underflow():
    x = tf.constant([[[1.0, 0.0]]], tf.bfloat16)
    weights = tf.constant([[200.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # p(gold) = e^-200
    loss_sum, count = losses.projected_cross_entropy_sums(x, weights, [[2]], pad_id=0)
    assert loss_sum.dtype == tf.float32 and float(count) == 1.0
    np.testing.assert_allclose(float(loss_sum), 200.0, rtol=1e-6)


# (share_embeddings, tie_output): one table tied; separate tables, tied or not.
SHARING = [(True, True), (False, True), (False, False)]
MODEL_VARIANTS = [
    dict(name="transformer", num_encoder_layers=1, num_decoder_layers=2, d_model=16,
         num_heads=2, ffn_dim=32, pre_norm=pre_norm, share_embeddings=share, tie_output=tie)
    for pre_norm in (True, False) for share, tie in SHARING] + [
    dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=1, embed_dim=8,
         hidden_dim=12, share_embeddings=share, tie_output=tie) for share, tie in SHARING]


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_models_fused_output_loss_equals_the_loss_of_their_logits(variant):
    # Tied tables, untied kernels with bias, pre-LN's final norm, the LSTM's pre-output.
    target_vocab = 23 if variant["share_embeddings"] else 19
    model = models.build_model(variant, source_vocab_size=23, target_vocab_size=target_vocab,
                               pad_id=0, eos_id=1, bos_id=3)
    rng = np.random.default_rng(3)
    features = {"inputs": rng.integers(4, 23, size=[2, 5]).astype(np.int32),
                "targets": rng.integers(4, target_vocab, size=[2, 6]).astype(np.int32)}
    features["targets"][1, 4:] = 0
    targets = features["targets"]
    with tf.GradientTape(persistent=True) as tape:
        hidden = model.decoder_hidden(features, training=False)
        fused, count = model.output_loss_sums(hidden, targets, pad_id=0, label_smoothing=0.1)
        reference, _ = losses.cross_entropy_sums(model.output_logits(hidden), targets,
                                                 pad_id=0, label_smoothing=0.1)
    assert float(count) == 10.0
    np.testing.assert_allclose(float(fused), float(reference), rtol=1e-5)
    variables = model.trainable_variables
    for variable, ours, theirs in zip(variables, tape.gradient(fused, variables),
                                      tape.gradient(reference, variables)):
        assert (ours is None) == (theirs is None), variable.path
        if ours is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(),
                                       tf.convert_to_tensor(theirs).numpy(), atol=1e-5,
                                       err_msg=variable.path)
