"""Transformer encoder-decoder (Vaswani et al. 2017) with an incremental decoder.

Pre-layer-norm by default (stable without warm-up tricks); `pre_norm=False` gives the
original post-LN blocks. Sinusoidal positions; one embedding table for both sides when
the vocabulary is shared (`share_embeddings`), and an output projection tied to the target
embedding (`tie_output`) or a separate one.

Incremental decoding keeps, per decoder layer, preallocated self-attention key/value
buffers of a static length plus the projected encoder keys/values, so each step costs one
token's worth of work and every shape is static (XLA/TPU). Every step reads and writes
the whole buffer, so the decoders start it short and `grow_cache` lengthens it in chunks.
"""

import dataclasses

import keras
import tensorflow as tf

from models import layers


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Transformer hyperparameters (built from the `model` ConfigDict by build_model)."""
    source_vocab_size: int
    target_vocab_size: int
    pad_id: int = 0
    eos_id: int = 1
    bos_id: int = 3
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pre_norm: bool = True
    share_embeddings: bool = True  # one table for both sides: needs one shared vocabulary
    tie_output: bool = True  # the output projection is the target embedding (transposed)

    def __post_init__(self):
        layers.check_vocabularies(self, family="transformer")
        for name in ("num_encoder_layers", "num_decoder_layers", "d_model",
                     "num_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads or self.d_model % 2:
            raise ValueError(f"transformer d_model={self.d_model} must be even and divisible "
                             f"by num_heads={self.num_heads}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"transformer {name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")


class _Block(keras.layers.Layer):
    """Residual wrapper: pre-LN `x + drop(f(norm(x)))` or post-LN `norm(x + drop(f(x)))`."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.pre_norm = config.pre_norm
        self.norm = layers.LayerNorm(config.d_model, name="norm")
        self.dropout = layers.Dropout(config.dropout)

    def residual(self, x, fn, training):
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)), training=training)
        return self.norm(x + self.dropout(fn(x), training=training))


class _SelfAttentionBlock(_Block):
    """Residual self-attention; `step` is its incremental form over a key/value cache."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = layers.MultiHeadAttention(
            config.d_model, config.num_heads, dropout=config.attention_dropout,
            name="attention")

    def call(self, x, attention_mask, training=False):
        return self.residual(x, lambda y: self.attention(y, y, attention_mask,
                                                         training=training),
                             training)

    def step(self, x, *, key_cache, value_cache, positions, history):
        """One decoding step with cache update.

        Args:
            x: [rows, 1, d_model] current token.
            key_cache, value_cache: [rows, max_len, heads, head_dim].
            positions: [rows] int32 index of the current token.
            history: [rows, G, max_len] bool, see `MultiHeadAttention.attend_history`.

        Returns:
            (output [rows, 1, d_model], key_cache, value_cache), each row's own slot
            written at `positions`.
        """
        new_caches = []

        def attend(y):
            key, value = self.attention.project_key_value(y)
            indices = tf.stack([tf.range(tf.shape(positions)[0]), positions], axis=1)
            for cache, new in ((key_cache, key), (value_cache, value)):
                new_caches.append(tf.tensor_scatter_nd_update(
                    cache, indices, tf.cast(new[:, 0], cache.dtype)))
            return self.attention.attend_history(y, new_caches[0], new_caches[1],
                                                 history=history)

        out = self.residual(x, attend, training=False)
        return out, new_caches[0], new_caches[1]


class _CrossAttentionBlock(_Block):
    """Residual attention over encoder keys/values projected once per sentence."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = layers.MultiHeadAttention(
            config.d_model, config.num_heads, dropout=config.attention_dropout,
            name="attention")

    def call(self, x, *, key, value, attention_mask, training=False):
        return self.residual(
            x, lambda y: self.attention.attend(y, key, value, mask=attention_mask,
                                               training=training),
            training)


class _FeedForwardBlock(_Block):
    """Residual position-wise feed-forward network."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.ffn = layers.FeedForward(config.d_model, config.ffn_dim,
                                      dropout=config.dropout, name="ffn")

    def call(self, x, training=False):
        return self.residual(x, lambda y: self.ffn(y, training=training), training)


class EncoderLayer(keras.layers.Layer):
    """Self-attention over the source (padding hidden), then feed-forward."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.self_attention = _SelfAttentionBlock(config, name="self_attention")
        self.feed_forward = _FeedForwardBlock(config, name="feed_forward")

    def call(self, x, attention_mask, training=False):
        x = self.self_attention(x, attention_mask, training=training)
        return self.feed_forward(x, training=training)


class DecoderLayer(keras.layers.Layer):
    """Causal self-attention, attention over the encoder output, then feed-forward."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.self_attention = _SelfAttentionBlock(config, name="self_attention")
        self.cross_attention = _CrossAttentionBlock(config, name="cross_attention")
        self.feed_forward = _FeedForwardBlock(config, name="feed_forward")

    def call(self, x, *, self_mask, memory_key, memory_value, memory_mask, training=False):
        x = self.self_attention(x, self_mask, training=training)
        x = self.cross_attention(x, key=memory_key, value=memory_value,
                                 attention_mask=memory_mask, training=training)
        return self.feed_forward(x, training=training)


class Transformer(layers.VocabularyOutput, keras.Model):
    """Encoder-decoder Transformer with the shared s2s model interface.

    Interface (same as LstmAttention):
        model({"inputs": [B,S] int32, "targets": [B,T] int32}, training) -> [B,T,V] float32
        encode(inputs [B,S]) -> {"memory": [B,S,d_model], "source_mask": [B,S] bool}
        init_cache(encoded, max_decode_length, beam_size=1) -> dict of [B*beam, ...]
        decode_step(tokens [B*beam] int32, cache) -> (logits [B*beam,V] float32, cache)
        reorder_cache(cache, rows [B*beam] int32) -> cache following the chosen beams
        grow_cache(cache, length) -> the same state in buffers of `length` positions

    Args:
        config: TransformerConfig.
    """

    def __init__(self, config: TransformerConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        c = config
        scale = c.d_model ** 0.5
        self.source_embedding = layers.TokenEmbedding(c.source_vocab_size, c.d_model,
                                                      scale=scale, name="source_embedding")
        if c.share_embeddings:
            self.target_embedding = self.source_embedding
        else:
            self.target_embedding = layers.TokenEmbedding(c.target_vocab_size, c.d_model,
                                                          scale=scale,
                                                          name="target_embedding")
        self.output_projection = (None if c.tie_output else layers.OutputProjection(
            c.d_model, c.target_vocab_size, name="output_projection"))
        self.embedding_dropout = layers.Dropout(c.dropout)
        # One attribute per layer, not a list: tf.train.Checkpoint does not follow the
        # lists Keras 3 tracks, so listed layers would silently not be saved.
        for i in range(c.num_encoder_layers):
            setattr(self, f"encoder_{i}", EncoderLayer(c, name=f"encoder_{i}"))
        for i in range(c.num_decoder_layers):
            setattr(self, f"decoder_{i}", DecoderLayer(c, name=f"decoder_{i}"))
        # Pre-LN leaves the residual stream unnormalized: normalize the stack's output.
        self.encoder_norm = layers.LayerNorm(c.d_model, name="encoder_norm") if c.pre_norm else None
        self.decoder_norm = layers.LayerNorm(c.d_model, name="decoder_norm") if c.pre_norm else None
        self.built = True  # every weight exists now; nothing is created while tracing

    @property
    def encoder_layers(self):
        return tuple(getattr(self, f"encoder_{i}")
                     for i in range(self.config.num_encoder_layers))

    @property
    def decoder_layers(self):
        return tuple(getattr(self, f"decoder_{i}")
                     for i in range(self.config.num_decoder_layers))

    # -- shared pieces -------------------------------------------------------------

    def _embed(self, embedding, ids, *, positions, training):
        x = embedding(ids)
        x += tf.cast(layers.sinusoidal_encoding(positions, self.config.d_model), x.dtype)
        return self.embedding_dropout(x, training=training)

    def _output_layer(self, x):
        """Decoder hidden states [..., d_model] -> (normalized, the output projection)."""
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return x, self.output_projection or self.target_embedding

    # -- the shared interface ------------------------------------------------------

    def encode(self, inputs, training=False):
        """Runs the encoder.

        Args:
            inputs: [batch, source_length] int32, padded with pad_id.
            training: enables dropout.

        Returns:
            {"memory": [batch, source_length, d_model] compute dtype,
             "source_mask": [batch, source_length] bool, True at real tokens}.
        """
        inputs = tf.convert_to_tensor(inputs)
        mask = tf.not_equal(inputs, self.config.pad_id)
        attention_mask = layers.padding_mask(mask)
        x = self._embed(self.source_embedding, inputs,
                        positions=tf.range(tf.shape(inputs)[1]), training=training)
        for layer in self.encoder_layers:
            x = layer(x, attention_mask, training=training)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return {"memory": x, "source_mask": mask}

    def decoder_hidden(self, features, training=False, sampling=None):
        """The teacher-forced pass up to (not including) `output_logits`.

        Split out so a trainer can project only the real target positions. With
        `sampling` (layers.Sampling) it is the two-pass scheduled sampling of Mihaylova &
        Liu (2019): a teacher-forced pass without dropout predicts every position, then
        a second pass reads those predictions in place of a fraction of the gold tokens.

        Returns:
            [batch, T, d_model] in the compute dtype.
        """
        encoded = self.encode(features["inputs"], training=training)
        targets = tf.convert_to_tensor(features["targets"])
        decoder_inputs = layers.shift_right(targets, self.config.bos_id)
        if sampling is not None:
            first = self.decoder_pass(encoded, decoder_inputs, training=False)
            own = layers.shift_right(layers.own_tokens(self.output_logits(first), sampling),
                                     self.config.bos_id)
            decoder_inputs = tf.where(layers.sampling_coins(tf.shape(targets), sampling),
                                      own, decoder_inputs)
        return self.decoder_pass(encoded, decoder_inputs, training=training)

    def decoder_pass(self, encoded, decoder_inputs, *, training=False):
        """The decoder over given inputs [batch, T] int32 -> [batch, T, d_model]."""
        length = tf.shape(decoder_inputs)[1]
        x = self._embed(self.target_embedding, decoder_inputs, positions=tf.range(length),
                        training=training)
        self_mask = layers.causal_mask(length)
        memory_mask = layers.padding_mask(encoded["source_mask"])
        for layer in self.decoder_layers:
            key, value = layer.cross_attention.attention.project_key_value(encoded["memory"])
            x = layer(x, self_mask=self_mask, memory_key=key, memory_value=value,
                      memory_mask=memory_mask, training=training)
        return x

    def init_cache(self, encoded, max_decode_length, beam_size=1):
        """Preallocates the decoding state for `beam_size` hypotheses per sentence.

        Args:
            encoded: output of `encode`.
            max_decode_length: static number of decoding steps the buffers hold.
            beam_size: rows per sentence (Python int); a sentence's rows are adjacent.

        Returns:
            Dict of tensors, rows = batch * beam_size:
              "step": [rows] int32 next position (all equal),
              "key_{i}", "value_{i}": [rows, max_decode_length, heads, head_dim] zeros,
              "history": [rows, beam_size, max_decode_length] bool: the cache slots
                  (row of the sentence's group, position) each row's prefix reads,
              and once per sentence, shared by its beams (cross-attention takes a
              sentence's beams as one group of queries):
              "source_mask": [batch, S] bool,
              "memory_key_{i}", "memory_value_{i}": [batch, S, heads, head_dim].
        """
        memory = encoded["memory"]
        heads = self.config.num_heads
        head_dim = self.config.d_model // heads
        cache = {"source_mask": encoded["source_mask"]}
        for i, layer in enumerate(self.decoder_layers):
            key, value = layer.cross_attention.attention.project_key_value(memory)
            cache[f"memory_key_{i}"] = key
            cache[f"memory_value_{i}"] = value
        rows = tf.shape(memory)[0] * beam_size
        cache["step"] = tf.zeros([rows], tf.int32)
        cache["history"] = tf.zeros([rows, beam_size, max_decode_length], tf.bool)
        zeros = tf.zeros([rows, max_decode_length, heads, head_dim], self.compute_dtype)
        for i in range(len(self.decoder_layers)):
            cache[f"key_{i}"] = zeros
            cache[f"value_{i}"] = zeros
        return cache

    def grow_cache(self, cache, length):
        """The same decoding state with room for `length` positions (at least the current
        buffer length; a Python int keeps shapes static): the new slots are empty and
        unread."""
        current = cache["history"].shape[2]
        if isinstance(length, int) and current is not None:
            extra = length - current
        else:
            extra = length - tf.shape(cache["history"])[2]
        grown = dict(cache, history=tf.pad(cache["history"], [[0, 0], [0, 0], [0, extra]]))
        for i in range(len(self.decoder_layers)):
            for name in (f"key_{i}", f"value_{i}"):
                grown[name] = tf.pad(cache[name], [[0, 0], [0, extra], [0, 0], [0, 0]])
        return grown

    def reorder_cache(self, cache, rows):
        """Row j continues the hypothesis of row `rows[j]` (same sentence group).

        Only the history moves: cached keys and values stay in the slot that wrote them.
        """
        return dict(cache, history=tf.gather(cache["history"], rows))

    def decode_step(self, tokens, cache):
        """Feeds one token per sequence and returns next-token logits.

        Args:
            tokens: [rows] int32, the previous token (bos_id at the first step).
            cache: from `init_cache` or the previous `decode_step`.

        Returns:
            (logits [rows, vocab] float32, updated cache).
        """
        positions = cache["step"]
        history = cache["history"]
        group, max_length = history.shape[1], tf.shape(history)[2]
        x = self._embed(self.target_embedding, tokens[:, None], positions=positions[:, None],
                        training=False)
        # Each row writes this position into its own slot and reads it from there.
        own_slot = tf.equal(tf.range(tf.shape(tokens)[0])[:, None] % group,
                            tf.range(group)[None, :])
        now = tf.equal(tf.range(max_length)[None, :], positions[:, None])
        history = history | (own_slot[:, :, None] & now[:, None, :])
        memory_mask = layers.padding_mask(cache["source_mask"])
        new_cache = dict(cache, history=history)
        for i, layer in enumerate(self.decoder_layers):
            x, new_cache[f"key_{i}"], new_cache[f"value_{i}"] = layer.self_attention.step(
                x, key_cache=cache[f"key_{i}"], value_cache=cache[f"value_{i}"],
                positions=positions, history=history)
            sentences = tf.reshape(x, [-1, group, self.config.d_model])
            sentences = layer.cross_attention(sentences, key=cache[f"memory_key_{i}"],
                                              value=cache[f"memory_value_{i}"],
                                              attention_mask=memory_mask)
            x = layer.feed_forward(tf.reshape(sentences, [-1, 1, self.config.d_model]))
        new_cache["step"] = positions + 1
        return self.output_logits(x[:, 0]), new_cache
