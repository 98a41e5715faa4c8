"""Building blocks shared by the Transformer and the attention LSTM.

Every layer here creates its weights in `__init__` (all shapes are known from the
config) and marks itself built, so a freshly constructed model is fully built: `encode`,
`init_cache` and `decode_step` can be called inside a `tf.function` before any forward
pass, and no variable is ever created while tracing.

Mixed precision: weights are stored in the layer's variable dtype (float32) and cast
explicitly to its compute dtype, because `encode`/`decode_step` run outside Keras'
`__call__` autocast scope. Softmax, layer-norm statistics and output logits are
computed in float32.
"""

import math
from typing import NamedTuple

import keras
import tensorflow as tf

from models import losses

# Attention score (in float32) at masked positions. Far below any real score, yet
# finite, so a fully masked row gives a uniform distribution instead of NaN; it is
# never cast to float16 (where it would overflow to -inf).
MASK_BIAS = -1e9


def sinusoidal_encoding(positions, dim):
    """Sinusoidal position encodings ("Attention Is All You Need", sin | cos halves).

    Computed from the positions on the fly, so any length works and the incremental
    decoder gets exactly the values the full forward pass uses.

    Args:
        positions: int tensor of any shape [...].
        dim: even encoding size.

    Returns:
        [..., dim] float32.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dim, got {dim}")
    half = dim // 2
    log_increment = math.log(10000.0) / max(half - 1, 1)
    inv_timescales = tf.exp(tf.range(half, dtype=tf.float32) * -log_increment)
    scaled = tf.cast(positions, tf.float32)[..., None] * inv_timescales
    return tf.concat([tf.sin(scaled), tf.cos(scaled)], axis=-1)


def padding_mask(mask):
    """Attention mask hiding padded keys.

    Args:
        mask: [batch, keys] bool, True at real tokens.

    Returns:
        [batch, 1, 1, keys] bool, broadcastable to [batch, heads, queries, keys].
    """
    return mask[:, None, None, :]


def causal_mask(length):
    """Attention mask letting query i see keys 0..i only: [1, 1, length, length] bool."""
    return tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)[None, None]


def shift_right(targets, bos_id):
    """Decoder inputs for teacher forcing: [bos, t0, t1, ..., t_{T-2}].

    Args:
        targets: [batch, length] int32.
        bos_id: decoder start token.

    Returns:
        [batch, length] int32.
    """
    start = tf.fill([tf.shape(targets)[0], 1], tf.cast(bos_id, targets.dtype))
    return tf.concat([start, targets[:, :-1]], axis=1)


class Sampling(NamedTuple):
    """Scheduled sampling for one training step (Bengio et al. 2015): each gold previous
    token is replaced by the model's own prediction with `probability`."""
    probability: tf.Tensor  # scalar float32 in [0, 1]
    seed: tf.Tensor  # [2] int32: stateless seed, so a resumed run draws the same coins
    sample: bool = False  # draw from the softmax instead of taking the argmax


def own_tokens(logits, sampling: Sampling):
    """The model's tokens from its logits [..., vocab]: argmax or a draw; no gradient."""
    logits = tf.stop_gradient(tf.cast(logits, tf.float32))
    if not sampling.sample:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    flat = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    drawn = tf.random.stateless_categorical(flat, 1, seed=sampling.seed + 1,
                                            dtype=tf.int32)
    return tf.reshape(drawn, tf.shape(logits)[:-1])


def sampling_coins(shape, sampling: Sampling):
    """[batch, length] bool: where a gold previous token is replaced (never position 0,
    which reads BOS)."""
    coins = tf.random.stateless_uniform(shape, seed=sampling.seed) < sampling.probability
    return coins & (tf.range(shape[1]) > 0)[None]


class Dropout(keras.layers.Layer):
    """Inverted dropout that draws 16 random bits per element instead of a float.

    Random-number generation is most of dropout's cost on a CPU, and Philox yields
    32 bits at a time, so two elements per draw halve it. The rate is exact to 1/65536.
    The seed state is a variable, so a resumed run continues the same random stream.

    Args:
        rate: fraction of elements zeroed during training, in [0, 1).
        seed: initial seed; None draws one from Keras' global seed.
    """

    _LEVELS = 1 << 16

    def __init__(self, rate, *, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.threshold = round(rate * self._LEVELS)
        self.seed_generator = keras.random.SeedGenerator(seed) if self.threshold else None
        self.built = True

    def call(self, x, training=False):
        if not training or not self.threshold:
            return x
        # Stateless ops want an int32 seed; the generator's state is int64.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2 ** 31 - 1), tf.int32)
        size = tf.size(x)
        words = tf.random.stateless_uniform([(size + 1) // 2], seed=seed, minval=None,
                                            maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
        keep = tf.reshape(bits, tf.shape(x)) >= tf.constant(self.threshold, tf.uint16)
        scale = self._LEVELS / (self._LEVELS - self.threshold)
        return x * (tf.cast(keep, x.dtype) * tf.cast(scale, x.dtype))


class Dense(keras.layers.Layer):
    """`x @ kernel + bias` over the last axis, with the input size fixed up front.

    Args:
        input_dim: size of the last input axis.
        units: output size.
        use_bias: add a bias.
        activation: optional callable applied to the output.
        kernel_initializer: Keras initializer name or object.
    """

    def __init__(self, input_dim, units, *, use_bias=True, activation=None,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation
        self.kernel = self.add_weight(
            shape=(input_dim, units), initializer=kernel_initializer, name="kernel")
        self.bias = (self.add_weight(shape=(units,), initializer="zeros", name="bias")
                     if use_bias else None)
        self.built = True

    def call(self, x):
        x = tf.cast(x, self.compute_dtype)
        y = tf.tensordot(x, tf.cast(self.kernel, self.compute_dtype), axes=1)
        if self.bias is not None:
            y += tf.cast(self.bias, self.compute_dtype)
        return self.activation(y) if self.activation is not None else y


class LayerNorm(keras.layers.Layer):
    """Layer normalization over the last axis with float32 statistics.

    Args:
        dim: size of the normalized axis.
        epsilon: variance floor.
    """

    def __init__(self, dim, *, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.scale = self.add_weight(shape=(dim,), initializer="ones", name="scale")
        self.offset = self.add_weight(shape=(dim,), initializer="zeros", name="offset")
        self.built = True

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(variance + self.epsilon)
        y = y * tf.cast(self.scale, tf.float32) + tf.cast(self.offset, tf.float32)
        return tf.cast(y, self.compute_dtype)


def project_to_vocab(x, weights, *, vocab_major):
    """Output logits in float32: [..., dim] x weights -> [..., vocab].

    Args:
        x: [..., dim] activations.
        weights: [vocab, dim] if vocab_major (an embedding table) else [dim, vocab].
        vocab_major: layout of `weights`.

    For a decoding step (x: [batch, dim]) this computes weights-major and transposes:
    XLA:CPU runs [128, 128] x [128, 8000] about twice as slowly as the same product
    with the large operand first, and that product dominates a beam-search step.
    """
    x = tf.cast(x, tf.float32)
    weights = tf.cast(weights, tf.float32)
    if x.shape.rank == 2:
        return tf.transpose(tf.matmul(weights, x, transpose_a=not vocab_major,
                                      transpose_b=True))
    return tf.tensordot(x, weights, axes=[[-1], [1 if vocab_major else 0]])


def check_vocabularies(config, *, family: str) -> None:
    """ValueError unless `config`'s vocabulary sizes are positive and, with
    share_embeddings, equal: one table cannot hold two different vocabularies."""
    for name in ("source_vocab_size", "target_vocab_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{family} {name} must be >= 1, got {getattr(config, name)}")
    if config.share_embeddings and config.source_vocab_size != config.target_vocab_size:
        raise ValueError(
            f"{family} share_embeddings=True needs one vocabulary, but the source has "
            f"{config.source_vocab_size} pieces and the target {config.target_vocab_size}: "
            "set share_embeddings=False")


class TokenEmbedding(keras.layers.Layer):
    """Token embedding table that can also serve as the (tied) output projection.

    Args:
        vocab_size: number of token ids.
        dim: embedding size.
        scale: multiply looked-up vectors by this (sqrt(dim) in the Transformer).
    """

    def __init__(self, vocab_size, dim, *, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.multiplier = scale
        self.table = self.add_weight(
            shape=(vocab_size, dim),
            initializer=keras.initializers.RandomNormal(stddev=dim ** -0.5),
            name="table")
        self.built = True

    def call(self, ids):
        """[...] int -> [..., dim] in the compute dtype."""
        vectors = tf.cast(tf.gather(self.table, ids), self.compute_dtype)
        return vectors * tf.cast(self.multiplier, self.compute_dtype)

    def logits(self, x):
        """Tied output projection: [..., dim] -> [..., vocab] float32."""
        return project_to_vocab(x, self.table, vocab_major=True)

    def loss_sums(self, x, targets, **loss_options):
        """losses.projected_cross_entropy_sums of the tied projection (training)."""
        return losses.projected_cross_entropy_sums(x, self.table, targets, **loss_options)


class VocabularyOutput:
    """Both models' `call`, `output_logits` and `output_loss_sums`, from their
    `decoder_hidden(features, training)` and `_output_layer(x)`: (the projection's inputs,
    the TokenEmbedding or OutputProjection that projects them)."""

    def call(self, features, training=False):
        """Teacher-forced forward pass.

        Args:
            features: {"inputs": [batch, S] int32, "targets": [batch, T] int32}.
            training: enables dropout.

        Returns:
            logits: [batch, T, vocab] float32; position t predicts targets[:, t].
        """
        return self.output_logits(self.decoder_hidden(features, training=training))

    def output_logits(self, x):
        """Decoder outputs [..., dim] -> next-token logits [..., vocab] float32."""
        x, projection = self._output_layer(x)
        return projection.logits(x)

    def output_loss_sums(self, x, targets, **loss_options):
        """Decoder outputs -> (loss_sum, token_count), the projection fused in."""
        x, projection = self._output_layer(x)
        return projection.loss_sums(x, targets, **loss_options)


class OutputProjection(keras.layers.Layer):
    """Untied output projection computed in float32: [..., dim] -> [..., vocab]."""

    def __init__(self, dim, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.kernel = self.add_weight(shape=(dim, vocab_size), initializer="glorot_uniform",
                                      name="kernel")
        self.bias = self.add_weight(shape=(vocab_size,), initializer="zeros", name="bias")
        self.built = True

    def call(self, x):
        return self.logits(x)

    def logits(self, x):
        return project_to_vocab(x, self.kernel, vocab_major=False) + tf.cast(self.bias,
                                                                            tf.float32)

    def loss_sums(self, x, targets, **loss_options):
        """losses.projected_cross_entropy_sums of this projection (training)."""
        return losses.projected_cross_entropy_sums(
            x, tf.transpose(self.kernel), targets, bias=self.bias, **loss_options)


def _heads_major(x):
    """[batch, length, heads, head_dim] <-> [batch, heads, length, head_dim]."""
    return tf.transpose(x, [0, 2, 1, 3])


class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention over several heads, split into key/value projection
    and attending so the decoder can project each new token once and cache it.

    Args:
        dim: model size (queries, memory and output).
        num_heads: number of heads; must divide `dim`.
        dropout: dropout rate on the attention probabilities.
    """

    def __init__(self, dim, num_heads, *, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"d_model={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        shape = (dim, num_heads, self.head_dim)
        self.query_kernel = self.add_weight(shape=shape, initializer="glorot_uniform",
                                            name="query")
        self.key_kernel = self.add_weight(shape=shape, initializer="glorot_uniform",
                                          name="key")
        self.value_kernel = self.add_weight(shape=shape, initializer="glorot_uniform",
                                            name="value")
        self.output_kernel = self.add_weight(shape=shape, initializer="glorot_uniform",
                                             name="output")
        self.dropout = Dropout(dropout)
        self.built = True

    def _kernel(self, kernel):
        return tf.cast(kernel, self.compute_dtype)

    def project_key_value(self, memory):
        """[batch, keys, dim] -> key, value: each [batch, keys, heads, head_dim]."""
        memory = tf.cast(memory, self.compute_dtype)
        key = tf.einsum("bsd,dhk->bshk", memory, self._kernel(self.key_kernel))
        value = tf.einsum("bsd,dhk->bshk", memory, self._kernel(self.value_kernel))
        return key, value

    def attend(self, query, key, value, *, mask, training=False):
        """Attends from `query` to already projected keys and values.

        Masks are bool (not additive float biases) so Keras' input autocasting never
        turns them into float16, and the masked score is set in float32.

        Args:
            query: [batch, queries, dim].
            key, value: [batch, keys, heads, head_dim].
            mask: bool, broadcastable to [batch, heads, queries, keys]; True = visible.
            training: enables attention dropout.

        Returns:
            [batch, queries, dim] in the compute dtype.
        """
        query = tf.cast(query, self.compute_dtype)
        q = tf.einsum("bqd,dhk->bqhk", query, self._kernel(self.query_kernel))
        q *= tf.cast(self.head_dim ** -0.5, q.dtype)
        # Explicit transposes + batched matmuls: on a CPU, a fifth to a quarter faster
        # (forward + backward) than the equivalent einsums for short sequences.
        scores = tf.matmul(_heads_major(q), _heads_major(key), transpose_b=True)
        scores = tf.where(mask, tf.cast(scores, tf.float32), MASK_BIAS)
        probs = tf.nn.softmax(scores, axis=-1)
        probs = self.dropout(tf.cast(probs, self.compute_dtype), training=training)
        context = _heads_major(tf.matmul(probs, _heads_major(value)))
        return tf.einsum("bqhk,dhk->bqd", context, self._kernel(self.output_kernel))

    def attend_history(self, query, key, value, *, history):
        """One new token per row attends to the key/value slots of its beam group.

        Beam search keeps each hypothesis' cached keys and values where they were
        written instead of copying caches to follow reordered hypotheses: rows come in
        groups of G (a sentence's beams), row slot g of a group holds what the hypothesis
        in slot g wrote at each position, and `history` says which (slot, position)
        entries make up a row's own prefix. Scoring against all G slots costs G times the
        (small) score products and saves copying [rows, length, dim] caches every step.

        Args:
            query: [rows, 1, dim], rows = groups * G.
            key, value: [rows, length, heads, head_dim].
            history: [rows, G, length] bool; True where the row reads slot g's entry.

        Returns:
            [rows, 1, dim] in the compute dtype.
        """
        group = history.shape[1]
        length = tf.shape(key)[1]
        query = tf.cast(query, self.compute_dtype)
        q = tf.einsum("bqd,dhk->bqhk", query, self._kernel(self.query_kernel))[:, 0]
        q *= tf.cast(self.head_dim ** -0.5, q.dtype)
        q = tf.reshape(q, [-1, group, self.num_heads, self.head_dim])
        key = tf.reshape(key, [-1, group, length, self.num_heads, self.head_dim])
        value = tf.reshape(value, [-1, group, length, self.num_heads, self.head_dim])
        scores = tf.einsum("bghk,bslhk->bghsl", q, key)
        visible = tf.reshape(history, [-1, group, 1, group, length])
        scores = tf.where(visible, tf.cast(scores, tf.float32), MASK_BIAS)
        shape = tf.shape(scores)
        probs = tf.nn.softmax(tf.reshape(scores, [-1, group, self.num_heads,
                                                  group * length]), axis=-1)
        probs = tf.cast(tf.reshape(probs, shape), self.compute_dtype)
        context = tf.einsum("bghsl,bslhk->bghk", probs, value)
        context = tf.reshape(context, [-1, 1, self.num_heads, self.head_dim])
        return tf.einsum("bqhk,dhk->bqd", context, self._kernel(self.output_kernel))

    def call(self, query, memory, attention_mask, training=False):
        """Full attention: [batch, queries, dim] x [batch, keys, dim] -> [batch, queries, dim].

        (Named `attention_mask`, not `mask`, which Keras reserves for its own masking.)
        """
        key, value = self.project_key_value(memory)
        return self.attend(query, key, value, mask=attention_mask, training=training)


class FeedForward(keras.layers.Layer):
    """Position-wise two-layer ReLU network with dropout on the hidden activations."""

    def __init__(self, dim, hidden_dim, *, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.inner = Dense(dim, hidden_dim, activation=tf.nn.relu, name="inner")
        self.outer = Dense(hidden_dim, dim, name="outer")
        self.dropout = Dropout(dropout)

    def call(self, x, training=False):
        return self.outer(self.dropout(self.inner(x), training=training))


class LSTMCell(keras.layers.Layer):
    """One LSTM step. State: (h, c), each [batch, units].

    Args:
        input_dim: size of the step input.
        units: state size.
    """

    state_names = ("h", "c")

    def __init__(self, input_dim, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.input_dim = input_dim
        self.kernel = self.add_weight(shape=(input_dim, 4 * units),
                                      initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(units, 4 * units),
                                                initializer="orthogonal",
                                                name="recurrent_kernel")
        # Forget-gate bias of 1 (Jozefowicz et al. 2015) keeps early gradients alive.
        init = tf.concat([tf.zeros([units]), tf.ones([units]), tf.zeros([2 * units])], 0)
        self.bias = self.add_weight(shape=(4 * units,),
                                    initializer=lambda shape, dtype=None: tf.cast(init, dtype),
                                    name="bias")
        self.built = True

    def project_inputs(self, x):
        """Input half of the gates, done once for a whole sequence: [..., in] -> [..., 4u]."""
        x = tf.cast(x, self.compute_dtype)
        return (tf.tensordot(x, tf.cast(self.kernel, self.compute_dtype), axes=1)
                + tf.cast(self.bias, self.compute_dtype))

    def step(self, projected, state):
        """One step from projected inputs [batch, 4u] -> (output h, new state)."""
        h, c = state
        gates = projected + tf.matmul(h, tf.cast(self.recurrent_kernel, self.compute_dtype))
        i, f, g, o = tf.split(gates, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (h, c)

    def zero_state(self, batch_size):
        zeros = tf.zeros([batch_size, self.units], self.compute_dtype)
        return (zeros, zeros)


class GRUCell(keras.layers.Layer):
    """One GRU step (reset gate applied after the recurrent matmul). State: (h,)."""

    state_names = ("h",)

    def __init__(self, input_dim, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.input_dim = input_dim
        self.kernel = self.add_weight(shape=(input_dim, 3 * units),
                                      initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(units, 3 * units),
                                                initializer="orthogonal",
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(3 * units,), initializer="zeros", name="bias")
        self.recurrent_bias = self.add_weight(shape=(3 * units,), initializer="zeros",
                                              name="recurrent_bias")
        self.built = True

    def project_inputs(self, x):
        """Input half of the gates for a whole sequence: [..., in] -> [..., 3u]."""
        x = tf.cast(x, self.compute_dtype)
        return (tf.tensordot(x, tf.cast(self.kernel, self.compute_dtype), axes=1)
                + tf.cast(self.bias, self.compute_dtype))

    def step(self, projected, state):
        """One step from projected inputs [batch, 3u] -> (output h, new state)."""
        (h,) = state
        recurrent = (tf.matmul(h, tf.cast(self.recurrent_kernel, self.compute_dtype))
                     + tf.cast(self.recurrent_bias, self.compute_dtype))
        x_z, x_r, x_n = tf.split(projected, 3, axis=-1)
        h_z, h_r, h_n = tf.split(recurrent, 3, axis=-1)
        z = tf.sigmoid(x_z + h_z)
        r = tf.sigmoid(x_r + h_r)
        n = tf.tanh(x_n + r * h_n)
        h = z * h + (1.0 - z) * n
        return h, (h,)

    def zero_state(self, batch_size):
        return (tf.zeros([batch_size, self.units], self.compute_dtype),)


def make_cell(kind, input_dim, units, *, name):
    """`kind` is "lstm" or "gru"."""
    if kind == "lstm":
        return LSTMCell(input_dim, units, name=name)
    if kind == "gru":
        return GRUCell(input_dim, units, name=name)
    raise ValueError(f"unknown recurrent cell {kind!r}; expected 'lstm' or 'gru'")
