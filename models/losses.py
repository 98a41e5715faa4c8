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
    vocab = tf.shape(logits)[-1]
    flat_logits = tf.reshape(logits, [-1, vocab])
    flat_targets = tf.reshape(tf.cast(targets, tf.int32), [-1])
    weights = tf.cast(tf.not_equal(flat_targets, pad_id), tf.float32)
    token_loss = _weighted_token_losses(flat_logits, flat_targets, weights=weights,
                                        eps=float(label_smoothing))
    return tf.reduce_sum(token_loss), tf.reduce_sum(weights)


def _weighted_token_losses(logits, targets, *, weights, eps):
    """weights * smoothed cross-entropy per row of [tokens, vocab] float32 logits.

    The [tokens, vocab] logits are the largest tensor of a training step, so this makes
    as few passes over them as it can: one softmax forward, one mean, and a backward of
    weights * (softmax - smoothed target) built from the saved softmax, where autodiff of
    the textbook formula takes about a dozen passes (3x slower on a CPU).
    """
    @tf.custom_gradient
    def token_losses(z):
        loss, probs = _smoothed_losses_and_softmax(
            z, targets, weights=weights, eps=eps,
            gold_logit=tf.gather(z, targets, batch_dims=1),
            mean_logit=tf.reduce_mean(z, axis=-1))

        def grad(upstream):
            scale = upstream * weights
            dz = (probs - eps / tf.cast(tf.shape(z)[-1], tf.float32)) * scale[:, None]
            rows = tf.range(tf.shape(z)[0])
            return tf.tensor_scatter_nd_sub(dz, tf.stack([rows, targets], axis=1),
                                            (1.0 - eps) * scale)

        return loss * weights, grad

    return token_losses(logits)


def _smoothed_losses_and_softmax(logits, targets, *, weights, eps, gold_logit, mean_logit):
    """Smoothed cross-entropy per row, and the softmax the hand-written backward reuses.

    -(1-eps) log p(gold) - eps mean_v log p(v), with log p(v) = z_v - logsumexp(z) and
    logsumexp(z) = gold_logit - log p(gold): one softmax, no separate logsumexp pass.
    """
    probs = tf.nn.softmax(logits)
    gold_prob = tf.gather(probs, targets, batch_dims=1)
    # log p(gold) from the softmax; if it underflowed anywhere, recompute exactly.
    tiny = tf.reduce_any((gold_prob < 1e-30) & (weights > 0))
    log_gold = tf.cond(
        tiny, lambda: gold_logit - tf.reduce_logsumexp(logits, axis=-1),
        lambda: tf.math.log(gold_prob))
    loss = -log_gold
    if eps:
        loss += eps * (gold_logit - mean_logit)
    return loss, probs


def projected_cross_entropy_sums(x, weights, targets, *, bias=None, pad_id=0,
                                 label_smoothing=0.0):
    """cross_entropy_sums of the logits x @ weights^T + bias, fused with that projection.

    The trainer's loss: its backward needs only the two products with the saved softmax
    and corrections of size [tokens, dim], where autodiff through the projection makes
    two more passes over the [tokens, vocab] gradient (the step's largest tensor).

    Args:
        x: [..., dim] output-layer inputs (any float dtype; computed in float32).
        weights: [vocab, dim] projection (an embedding table, or a kernel transposed).
        targets: [...] int, pad_id at padding.
        bias: optional [vocab] logit bias.
        pad_id: padding id; those positions contribute nothing.
        label_smoothing: eps in [0, 1), as in cross_entropy_sums.

    Returns:
        (loss_sum, token_count): float32 scalars.
    """
    x = tf.cast(x, tf.float32)
    flat_x = tf.reshape(x, [-1, tf.shape(x)[-1]])
    flat_targets = tf.reshape(tf.cast(targets, tf.int32), [-1])
    token_weights = tf.cast(tf.not_equal(flat_targets, pad_id), tf.float32)
    eps = float(label_smoothing)
    weights = tf.convert_to_tensor(tf.cast(weights, tf.float32))
    params = [weights] if bias is None else [weights, tf.cast(bias, tf.float32)]

    @tf.custom_gradient
    def token_losses(h, *params):
        w = params[0]
        vocab = tf.cast(tf.shape(w)[0], tf.float32)
        logits = tf.matmul(h, w, transpose_b=True)
        gold_w = tf.gather(w, flat_targets)
        gold_logit = tf.reduce_sum(h * gold_w, axis=-1)
        mean_logit = tf.linalg.matvec(h, tf.reduce_mean(w, axis=0))
        if bias is not None:
            logits += params[1]
            gold_logit += tf.gather(params[1], flat_targets)
            mean_logit += tf.reduce_mean(params[1])
        loss, probs = _smoothed_losses_and_softmax(
            logits, flat_targets, weights=token_weights, eps=eps, gold_logit=gold_logit,
            mean_logit=mean_logit)

        def grad(upstream):
            # d loss / d logits = scale * (probs - eps / vocab - (1 - eps) * one_hot(gold));
            # each term is pushed through the projection on its own.
            scale = (upstream * token_weights)[:, None]
            scaled_h = scale * h
            d_h = scale * (tf.matmul(probs, w) - (eps / vocab) * tf.reduce_sum(w, axis=0)
                           - (1.0 - eps) * gold_w)
            gold_rows = tf.math.unsorted_segment_sum((1.0 - eps) * scaled_h, flat_targets,
                                                     tf.shape(w)[0])
            d_w = (tf.matmul(probs, scaled_h, transpose_a=True)
                   - (eps / vocab) * tf.reduce_sum(scaled_h, axis=0) - gold_rows)
            if bias is None:
                return d_h, d_w
            gold_bias = tf.math.unsorted_segment_sum((1.0 - eps) * scale[:, 0], flat_targets,
                                                     tf.shape(w)[0])
            d_bias = (tf.linalg.matvec(probs, scale[:, 0], transpose_a=True)
                      - (eps / vocab) * tf.reduce_sum(scale) - gold_bias)
            return d_h, d_w, d_bias

        return loss * token_weights, grad

    return tf.reduce_sum(token_losses(flat_x, *params)), tf.reduce_sum(token_weights)


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
