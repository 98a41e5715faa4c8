"""Attention-based recurrent encoder-decoder (Bahdanau et al. 2015, Luong et al. 2015).

Bidirectional LSTM/GRU encoder; stacked recurrent decoder whose top state attends to
the encoder outputs (additive "bahdanau" or multiplicative "luong" general score), mixed
into an attentional vector tanh(W [context; h]) that predicts the next token and, with
input feeding, is fed to the next step. Both attentions use the current top decoder
state as query (the Luong layout), so one step function serves training and decoding.

The teacher-forced pass runs that same step function under `tf.scan`, so cached
step-by-step decoding reproduces it exactly. Dropout applies to embeddings, between
stacked layers and on the attentional vector before the output projection; masks for
inside the recurrence are drawn before the loop.
"""

import dataclasses

import keras
import tensorflow as tf

from models import layers


@dataclasses.dataclass(frozen=True)
class LstmAttentionConfig:
    """Attention-LSTM hyperparameters (built from the `model` ConfigDict by build_model)."""
    source_vocab_size: int
    target_vocab_size: int
    pad_id: int = 0
    eos_id: int = 1
    bos_id: int = 3
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    embed_dim: int = 256
    hidden_dim: int = 512
    cell: str = "lstm"  # "lstm" | "gru"
    attention: str = "luong"  # "luong" (general) | "bahdanau" (additive)
    input_feeding: bool = True
    dropout: float = 0.2
    share_embeddings: bool = True  # one table for both sides: needs one shared vocabulary
    tie_output: bool = True  # the output projection is the target embedding (transposed)

    def __post_init__(self):
        layers.check_vocabularies(self, family="lstm_attention")
        for name in ("num_encoder_layers", "num_decoder_layers", "embed_dim",
                     "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"lstm_attention {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"lstm_attention cell must be 'lstm' or 'gru', got {self.cell!r}")
        if self.attention not in ("luong", "bahdanau"):
            raise ValueError("lstm_attention attention must be 'luong' or 'bahdanau', got "
                             f"{self.attention!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lstm_attention dropout must be in [0, 1), got {self.dropout}")


def _run_rnn(cell, x, mask, *, reverse):
    """Runs `cell` over a padded sequence, holding the state over padding.

    Holding the state means a backward pass over right-padded input starts at each
    sequence's last real token, so extra padding changes nothing.

    Args:
        cell: layers.LSTMCell or layers.GRUCell.
        x: [batch, length, input_dim].
        mask: [batch, length] bool, True at real tokens.
        reverse: run from the last position to the first.

    Returns:
        (outputs [batch, length, units] zero at padding, final state tuple of [batch, units]).
    """
    projected = tf.transpose(cell.project_inputs(x), [1, 0, 2])
    step_mask = tf.transpose(mask)[:, :, None]
    batch = tf.shape(x)[0]
    state = cell.zero_state(batch)
    first_output = tf.zeros_like(state[0])

    def step(carry, elems):
        _, old_state = carry
        inputs, keep = elems
        output, new_state = cell.step(inputs, old_state)
        new_state = tuple(tf.where(keep, new, old) for new, old in zip(new_state, old_state))
        return tf.where(keep, output, tf.zeros_like(output)), new_state

    outputs, states = tf.scan(step, (projected, step_mask), initializer=(first_output, state),
                              reverse=reverse)
    final = tuple(s[0] if reverse else s[-1] for s in states)
    return tf.transpose(outputs, [1, 0, 2]), final


class _Attention(keras.layers.Layer):
    """Scores encoder outputs against a decoder state; keys are precomputed per sentence.

    Args:
        kind: "luong" (score = q . W k) or "bahdanau" (score = v . tanh(W k + U q)).
        memory_dim: encoder output size.
        query_dim: decoder state size (also the key size).
    """

    def __init__(self, kind, *, memory_dim, query_dim, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("luong", "bahdanau"):
            raise ValueError(f"unknown attention {kind!r}; expected 'luong' or 'bahdanau'")
        self.kind = kind
        self.key_projection = layers.Dense(memory_dim, query_dim, use_bias=False, name="key")
        if kind == "bahdanau":
            self.query_projection = layers.Dense(query_dim, query_dim, use_bias=False,
                                                 name="query")
            self.score_vector = layers.Dense(query_dim, 1, use_bias=False, name="score")

    def keys(self, memory):
        """[batch, S, memory_dim] -> [batch, S, query_dim]."""
        return self.key_projection(memory)

    def call(self, query, *, keys, memory, source_mask):
        """Context vector.

        Args:
            query: [batch, query_dim].
            keys: [batch, S, query_dim] from `keys`.
            memory: [batch, S, memory_dim].
            source_mask: [batch, S] bool, True at real source tokens.

        Returns:
            [batch, memory_dim] in the compute dtype.
        """
        if self.kind == "luong":
            scores = tf.einsum("bsh,bh->bs", keys, tf.cast(query, keys.dtype))
        else:
            hidden = tf.tanh(keys + self.query_projection(query)[:, None, :])
            scores = self.score_vector(hidden)[..., 0]
        scores = tf.where(source_mask, tf.cast(scores, tf.float32), layers.MASK_BIAS)
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), memory.dtype)
        return tf.einsum("bs,bsd->bd", probs, memory)


class LstmAttention(layers.VocabularyOutput, keras.Model):
    """Recurrent encoder-decoder with attention and the shared s2s model interface.

    Interface (same as Transformer):
        model({"inputs": [B,S] int32, "targets": [B,T] int32}, training) -> [B,T,V] float32
        encode(inputs [B,S]) -> {"memory": [B,S,2H], "source_mask": [B,S] bool,
                                 "final_h": [B,2H] (+ "final_c": [B,2H] for LSTM)}
        init_cache(encoded, max_decode_length, beam_size=1) -> dict of [B*beam, ...]
        decode_step(tokens [B*beam] int32, cache) -> (logits [B*beam,V] float32, cache)
        reorder_cache(cache, rows [B*beam] int32) -> cache following the chosen beams

    Args:
        config: LstmAttentionConfig.
    """

    def __init__(self, config: LstmAttentionConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = c = config
        hidden, memory_dim = c.hidden_dim, 2 * c.hidden_dim
        self.source_embedding = layers.TokenEmbedding(c.source_vocab_size, c.embed_dim,
                                                      name="source_embedding")
        self.target_embedding = (self.source_embedding if c.share_embeddings else
                                 layers.TokenEmbedding(c.target_vocab_size, c.embed_dim,
                                                       name="target_embedding"))
        self.dropout = layers.Dropout(c.dropout)
        # One attribute per layer, not lists: tf.train.Checkpoint does not follow the
        # lists Keras 3 tracks, so listed layers would silently not be saved.
        for i in range(c.num_encoder_layers):
            input_dim = c.embed_dim if i == 0 else memory_dim
            for direction in ("forward", "backward"):
                name = f"encoder_{i}_{direction}"
                setattr(self, name, layers.make_cell(c.cell, input_dim, hidden, name=name))
        for i in range(c.num_decoder_layers):
            input_dim = hidden if i else c.embed_dim + (hidden if c.input_feeding else 0)
            setattr(self, f"decoder_{i}",
                    layers.make_cell(c.cell, input_dim, hidden, name=f"decoder_{i}"))
        self.state_names = self.decoder_0.state_names
        # Bridges: the encoder's final (forward; backward) state initializes each decoder
        # layer, so the decoder starts from a summary of the source.
        for i in range(c.num_decoder_layers):
            for name in self.state_names:
                setattr(self, f"bridge_{name}_{i}", layers.Dense(
                    memory_dim, hidden, activation=tf.tanh if name == "h" else None,
                    name=f"bridge_{name}_{i}"))
        self.attention = _Attention(c.attention, memory_dim=memory_dim, query_dim=hidden,
                                    name="attention")
        self.combine = layers.Dense(memory_dim + hidden, hidden, use_bias=False,
                                    activation=tf.tanh, name="combine")
        if c.tie_output:
            self.output_projection = None
            self.pre_output = (layers.Dense(hidden, c.embed_dim, use_bias=False,
                                            name="pre_output")
                               if hidden != c.embed_dim else None)
        else:
            self.pre_output = None
            self.output_projection = layers.OutputProjection(hidden, c.target_vocab_size,
                                                             name="output_projection")
        self.built = True  # every weight exists now; nothing is created while tracing

    @property
    def encoder_cells(self):
        """Per encoder layer: (forward cell, backward cell)."""
        return tuple((getattr(self, f"encoder_{i}_forward"),
                      getattr(self, f"encoder_{i}_backward"))
                     for i in range(self.config.num_encoder_layers))

    @property
    def decoder_cells(self):
        return tuple(getattr(self, f"decoder_{i}")
                     for i in range(self.config.num_decoder_layers))

    # -- shared pieces -------------------------------------------------------------

    def _output_layer(self, attentional):
        """Attentional states [..., hidden] -> (the projection's inputs, the projection)."""
        if self.output_projection is not None:
            return attentional, self.output_projection
        if self.pre_output is not None:
            attentional = self.pre_output(attentional)
        return attentional, self.target_embedding

    def _step(self, embedded, *, states, feed, memory, dropout_masks=None):
        """One decoder step, shared by the teacher-forced scan and `decode_step`.

        Args:
            embedded: [batch, embed_dim] previous token's embedding.
            states: per decoder layer, a tuple of [batch, hidden] state tensors.
            feed: [batch, hidden] previous attentional vector (input feeding).
            memory: (memory [B,S,2H], keys [B,S,H], mask [B,S] bool).
            dropout_masks: per gap between decoder layers, a [batch, hidden] scaled
                keep mask (training only).

        Returns:
            (attentional vector [batch, hidden], new per-layer states).
        """
        x = tf.cast(embedded, self.compute_dtype)
        if self.config.input_feeding:
            x = tf.concat([x, tf.cast(feed, x.dtype)], axis=-1)
        new_states = []
        for i, cell in enumerate(self.decoder_cells):
            x, state = cell.step(cell.project_inputs(x), states[i])
            new_states.append(state)
            if dropout_masks is not None and i + 1 < len(self.decoder_cells):
                x *= dropout_masks[i]
        memory_values, keys, mask = memory
        context = self.attention(x, keys=keys, memory=memory_values, source_mask=mask)
        return self.combine(tf.concat([context, x], axis=-1)), new_states

    def _initial_states(self, encoded):
        return [tuple(getattr(self, f"bridge_{name}_{i}")(encoded[f"final_{name}"])
                      for name in self.state_names)
                for i in range(self.config.num_decoder_layers)]

    # -- the shared interface ------------------------------------------------------

    def encode(self, inputs, training=False):
        """Runs the bidirectional encoder.

        Args:
            inputs: [batch, source_length] int32, padded with pad_id.
            training: enables dropout.

        Returns:
            {"memory": [batch, S, 2*hidden_dim], "source_mask": [batch, S] bool,
             "final_h": [batch, 2*hidden_dim] top layer's last (forward; backward) state,
             "final_c": same for the LSTM cell state (LSTM only)}.
        """
        inputs = tf.convert_to_tensor(inputs)
        mask = tf.not_equal(inputs, self.config.pad_id)
        x = self.dropout(self.source_embedding(inputs), training=training)
        finals = None
        for i, (forward, backward) in enumerate(self.encoder_cells):
            if i:
                x = self.dropout(x, training=training)
            forward_out, forward_final = _run_rnn(forward, x, mask, reverse=False)
            backward_out, backward_final = _run_rnn(backward, x, mask, reverse=True)
            x = tf.concat([forward_out, backward_out], axis=-1)
            finals = [tf.concat(pair, axis=-1) for pair in zip(forward_final, backward_final)]
        encoded = {"memory": x, "source_mask": mask}
        for name, final in zip(self.state_names, finals):
            encoded[f"final_{name}"] = final
        return encoded

    def decoder_hidden(self, features, training=False, sampling=None):
        """The teacher-forced pass up to (not including) `output_logits`.

        Split out so a trainer can project only the real target positions. With
        `sampling` (layers.Sampling), per-step scheduled sampling (Bengio et al. 2015):
        at each step the previous gold token is replaced, where its coin says so, by the
        model's own prediction from the previous step's output.

        Returns:
            [batch, T, hidden] attentional states in the compute dtype.
        """
        encoded = self.encode(features["inputs"], training=training)
        targets = tf.convert_to_tensor(features["targets"])
        decoder_inputs = layers.shift_right(targets, self.config.bos_id)
        embedded = self.dropout(self.target_embedding(decoder_inputs), training=training)
        elems = {"embedding": tf.transpose(embedded, [1, 0, 2])}  # time-major for the scan
        memory = (encoded["memory"], self.attention.keys(encoded["memory"]),
                  encoded["source_mask"])
        states = self._initial_states(encoded)
        batch, length = tf.shape(targets)[0], tf.shape(targets)[1]
        feed = tf.zeros([batch, self.config.hidden_dim], self.compute_dtype)

        gaps = len(self.decoder_cells) - 1
        if training and self.config.dropout > 0 and gaps:
            ones = tf.ones([length, gaps, batch, self.config.hidden_dim], self.compute_dtype)
            elems["masks"] = self.dropout(ones, training=True)
        if sampling is not None:
            elems["coin"] = tf.transpose(layers.sampling_coins(tf.shape(targets), sampling))
            elems["index"] = tf.range(length)

        def step(carry, elems):
            old_states, old_feed = carry
            token_embedding = elems["embedding"]
            if sampling is not None:  # the previous step's own token, where the coin says
                own = layers.own_tokens(self.output_logits(old_feed),
                                        sampling._replace(seed=sampling.seed + elems["index"]))
                token_embedding = tf.where(elems["coin"][:, None],
                                           tf.cast(self.target_embedding(own),
                                                   token_embedding.dtype), token_embedding)
            unstacked = (tf.unstack(elems["masks"], num=gaps) if "masks" in elems else None)
            new_feed, new_states = self._step(token_embedding, states=old_states,
                                              feed=old_feed, memory=memory,
                                              dropout_masks=unstacked)
            return new_states, new_feed

        _, attentional = tf.scan(step, elems, initializer=(states, feed))
        attentional = tf.transpose(attentional, [1, 0, 2])
        return self.dropout(attentional, training=training)

    def init_cache(self, encoded, max_decode_length, beam_size=1):
        """Decoding state; `max_decode_length` is unused (recurrent state has no length).

        Args:
            encoded: output of `encode`.
            max_decode_length: unused.
            beam_size: rows per sentence (Python int); a sentence's rows are adjacent.

        Returns:
            Dict of tensors, each with rows (batch * beam_size) first:
              "step": [batch] int32 (all equal), "source_mask": [batch, S] bool,
              "memory": [batch, S, 2H], "keys": [batch, S, H], "feed": [batch, H],
              "h_{i}" (and "c_{i}" for LSTM): [batch, H] per decoder layer.
        """
        del max_decode_length
        memory = encoded["memory"]
        batch = tf.shape(memory)[0]
        cache = {
            "step": tf.zeros([batch], tf.int32),
            "source_mask": encoded["source_mask"],
            "memory": memory,
            "keys": self.attention.keys(memory),
            "feed": tf.zeros([batch, self.config.hidden_dim], self.compute_dtype),
        }
        for i, state in enumerate(self._initial_states(encoded)):
            for name, value in zip(self.state_names, state):
                cache[f"{name}_{i}"] = value
        if beam_size > 1:
            cache = {k: tf.repeat(v, beam_size, axis=0) for k, v in cache.items()}
        return cache

    def reorder_cache(self, cache, rows):
        """Row j continues the hypothesis of row `rows[j]` (same sentence group).

        The encoder entries are identical within a group, so only the recurrent state
        and the attentional feed move.
        """
        moving = ["feed"] + [f"{name}_{i}" for i in range(self.config.num_decoder_layers)
                             for name in self.state_names]
        return dict(cache, **{key: tf.gather(cache[key], rows) for key in moving})

    def decode_step(self, tokens, cache):
        """Feeds one token per sequence and returns next-token logits.

        Args:
            tokens: [batch] int32, the previous token (bos_id at the first step).
            cache: from `init_cache` or the previous `decode_step`.

        Returns:
            (logits [batch, vocab] float32, updated cache).
        """
        states = [tuple(cache[f"{name}_{i}"] for name in self.state_names)
                  for i in range(self.config.num_decoder_layers)]
        memory = (cache["memory"], cache["keys"], cache["source_mask"])
        attentional, new_states = self._step(self.target_embedding(tokens), states=states,
                                             feed=cache["feed"], memory=memory)
        new_cache = dict(cache, feed=attentional, step=cache["step"] + 1)
        for i, state in enumerate(new_states):
            for name, value in zip(self.state_names, state):
                new_cache[f"{name}_{i}"] = value
        return self.output_logits(attentional), new_cache
