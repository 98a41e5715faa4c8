"""Token-level loss and accuracy as (sum, count) pairs.

Returning sums rather than means lets the trainer divide by the GLOBAL number of real
target tokens across replicas (and hosts), so every token weighs the same no matter
how the batch was split.
"""

import tensorflow as tf


def cross_entropy_sums(logits, targets, *, pad_id=0, label_smoothing=0.0):
    """Summed (label-smoothed) cross-entropy over real target tokens.

    With smoothing eps the target distribution is (1 - eps) * one_hot + eps / vocab
    (uniform over the whole vocabulary). The loss is not shifted by that distribution's
    entropy, so with eps > 0 its minimum is above zero.

    Args:
        logits: [batch, length, vocab] float (cast to float32).
        targets: [batch, length] int, pad_id at padding.
        pad_id: padding id; those positions contribute nothing.
        label_smoothing: eps in [0, 1).

    Returns:
        (loss_sum, token_count): float32 scalars.
    """
    logits = tf.cast(logits, tf.float32)
    weights = tf.cast(tf.not_equal(targets, pad_id), tf.float32)
    gold = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    if label_smoothing:
        # -mean_v log p_v = logsumexp(logits) - mean(logits): no [B, T, V] log-prob copy.
        uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
        token_loss = (1.0 - label_smoothing) * gold + label_smoothing * uniform
    else:
        token_loss = gold
    return tf.reduce_sum(token_loss * weights), tf.reduce_sum(weights)


def accuracy_sums(logits, targets, *, pad_id=0):
    """Number of real target tokens whose argmax prediction is right, and their count.

    Args:
        logits: [batch, length, vocab].
        targets: [batch, length] int, pad_id at padding.
        pad_id: padding id.

    Returns:
        (correct, token_count): float32 scalars.
    """
    weights = tf.cast(tf.not_equal(targets, pad_id), tf.float32)
    predicted = tf.argmax(logits, axis=-1, output_type=targets.dtype)
    correct = tf.cast(tf.equal(predicted, targets), tf.float32) * weights
    return tf.reduce_sum(correct), tf.reduce_sum(weights)
