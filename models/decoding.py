"""Greedy and beam-search decoding over the models' incremental caches.

Works with any model exposing the shared interface (`encode`, `init_cache`,
`decode_step`, `reorder_cache`, and `config.pad_id / eos_id / bos_id`). Every loop
variable has a static shape and the loops are `tf.while_loop`s, so both decoders compile
with `tf.function(jit_compile=True)` (required under TPUStrategy). They stop early once the
answer is settled, which XLA handles as a dynamic trip count.

Cache handling: `init_cache(encoded, length, beam_size)` lays out a sentence's beams in
adjacent rows, and after each step beam search calls `reorder_cache(cache, rows)` so that
row j continues hypothesis `rows[j]`. Each model moves only what differs between a
sentence's beams: the attention-LSTM its recurrent state, the Transformer a small
[rows, beam, length] history of which cache slots make up each prefix (its cached keys
and values never move; see `MultiHeadAttention.attend_history`).

Decode length: buffers are preallocated, so `max_decode_length` must be a Python int.
`max_decode_length()` derives it from the padded (static) source length of the batch,
which bounds every real length in it, so one compiled decoder serves each bucket;
`batch_max_decode_length()` uses the longest real source in an eager batch instead.

Growing caches: a Transformer step reads and writes its whole key/value buffer, so a
buffer sized for the longest possible output makes every step of a long batch pay for
it. A model with `grow_cache(cache, length)` starts with `cache_chunk` positions and the
loop runs in phases, doubling the buffer between them (`buffer_lengths`): a step costs at
most twice its prefix, every shape stays static, and a batch that finishes early never
allocates the rest. Outputs do not depend on the buffer length.
"""

import math
from typing import NamedTuple

import tensorflow as tf

# Score of impossible hypotheses: finite so arithmetic on it never makes NaN.
_NEG_INF = -1e9


def max_decode_length(source_length, *, ratio=1.5, offset=10, cap=256):
    """Static decode budget: min(cap, ceil(ratio * source_length + offset)).

    Args:
        source_length: padded source length of the batch (a Python int, e.g. the
            bucket boundary, `inputs.shape[1]`).
        ratio, offset: target length allowed per source token, plus slack.
        cap: hard upper bound.

    Returns:
        Python int >= 1.
    """
    return max(1, min(int(cap), int(math.ceil(ratio * int(source_length) + offset))))


def batch_max_decode_length(inputs, *, pad_id=0, ratio=1.5, offset=10, cap=256):
    """Like `max_decode_length` but from the longest REAL source in the batch.

    Eager only (the result sizes the decoder's buffers): tighter than the padded length
    when a batch is mostly padding, at the cost of one compilation per distinct value.

    Args:
        inputs: [batch, S] int token ids, pad_id at padding.
    """
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(inputs, pad_id), tf.int32), axis=1)
    return max_decode_length(int(tf.reduce_max(lengths)), ratio=ratio, offset=offset, cap=cap)


def buffer_lengths(length, *, chunk):
    """The cache lengths a decode of `length` steps runs through: chunk, 2 * chunk, ...,
    then `length`. A phase is added only where it saves at least a third of the next."""
    sizes, size = [], int(chunk)
    while size * 3 // 2 < length:
        sizes.append(size)
        size *= 2
    return sizes + [int(length)]


def _phase_lengths(model, length, *, chunk, bound):
    """The cache's buffer length in each phase of the decoding loop (`buffer_lengths`).
    A tensor `length` (outside XLA) takes its phases from the static `bound` >= it."""
    if not hasattr(model, "grow_cache"):
        return [length]
    if isinstance(length, int):
        return buffer_lengths(length, chunk=chunk)
    if bound is None:
        raise ValueError("a tensor max_decode_length needs a Python int length_bound")
    return [tf.minimum(size, length) for size in buffer_lengths(bound, chunk=chunk)[:-1]] + [
        length]


def _in_phases(model, cond, body, loop_vars, *, cache_of, with_cache, phases):
    """`tf.while_loop(cond, body, loop_vars)` with the model's cache grown between phases
    to each of `phases` (`_phase_lengths`; the cache starts at the first). loop_vars =
    (i, ...) with i from 0; `cache_of(vars)` reads the cache, `with_cache(vars, cache)`
    replaces it."""
    done_steps = 0
    for k, size in enumerate(phases):
        if k:
            loop_vars = with_cache(loop_vars, model.grow_cache(cache_of(loop_vars), size))
        loop_vars = tf.while_loop(
            lambda i, *rest, size=size: tf.logical_and(i < size, cond(i, *rest)), body,
            loop_vars, maximum_iterations=size - done_steps)
        done_steps = size
    return loop_vars


def length_penalty(length, alpha):
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016); float32."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _without_special(logits, config):
    """Logits in float32 with pad_id and bos_id made impossible."""
    vocab = logits.shape[-1]
    banned = tf.reduce_any(tf.one_hot([config.pad_id, config.bos_id], vocab, on_value=True,
                                      off_value=False, dtype=tf.bool), axis=0)
    return tf.where(banned, _NEG_INF, tf.cast(logits, tf.float32))


def decoding_log_probs(logits, config):
    """Log-probabilities the decoders rank by: pad_id and bos_id are never generated.

    Neither id is ever a training target, but an untrained model may still favour them,
    and a generated pad would be indistinguishable from padding.

    Args:
        logits: [..., vocab] float.
        config: has pad_id and bos_id.

    Returns:
        [..., vocab] float32, renormalized over the remaining ids.
    """
    return tf.nn.log_softmax(_without_special(logits, config), axis=-1)


def _top_log_probs(logits, config, *, k):
    """The k most likely next tokens per row, without a [rows, vocab] log-prob copy.

    Args:
        logits: [rows, vocab] float32.
        config: has pad_id and bos_id (never generated, see `decoding_log_probs`).
        k: tokens kept per row (at most vocab).

    Returns:
        (log_probs [rows, k] float32 descending, tokens [rows, k] int32).
    """
    logits = _without_special(logits, config)
    top_logits, tokens = tf.math.top_k(logits, k=min(k, logits.shape[-1]))
    return top_logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True), tokens


def _static_batch(inputs):
    return inputs.shape[0] if inputs.shape[0] is not None else tf.shape(inputs)[0]


def _write_column(sequences, index, values):
    """sequences[..., index] = values, for a scalar tensor index (static shapes)."""
    at_index = tf.equal(tf.range(tf.shape(sequences)[-1]), index)
    return tf.where(at_index, values[..., None], sequences)


def sentence_limits(inputs, *, pad_id, ratio, offset, cap):
    """Per-sentence output limits from each REAL source length: [batch] int32,
    min(cap, ceil(ratio * length + offset)). They make a sentence's output independent
    of the batch it is decoded in (its length, padding and buffer size)."""
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(inputs, pad_id), tf.float32), axis=1)
    limits = tf.cast(tf.math.ceil(ratio * lengths + offset), tf.int32)
    return tf.clip_by_value(limits, 1, int(cap))


def _limits(max_lengths, batch, length):
    """[batch] int32 per-sentence limits, never above the buffer length."""
    if max_lengths is None:
        return tf.fill([batch], length)
    return tf.minimum(tf.cast(max_lengths, tf.int32), length)


def length_bounded_beam_search(model, inputs, *, beam_size, alpha, ratio, offset, cap,
                                cache_chunk=32, nbest=False):
    """Beam search whose sentences each stop at `sentence_limits`, as the evaluator and
    the export both decode, so a sentence's output does not depend on its batch.

    Its buffers fit the batch: with a static source length (a bucket; XLA needs it) the
    padded length's budget, one compiled decoder per bucket; with inputs of shape
    [batch, None] (outside XLA) the longest sentence limit in the batch, one traced
    decoder for every length.

    Returns:
        tokens: [batch, buffer length] int32; scores: [batch] float32. With nbest=True,
        every finished hypothesis (`beam_search_nbest`): [batch, beam_size, buffer
        length] and [batch, beam_size].
    """
    budget = dict(ratio=ratio, offset=offset, cap=cap)
    limits = sentence_limits(inputs, pad_id=model.config.pad_id, **budget)
    if inputs.shape[1] is not None:
        length = max_decode_length(inputs.shape[1], **budget)
    else:
        length = tf.maximum(tf.reduce_max(limits), 1)  # 1 for an empty batch
    search = beam_search_nbest if nbest else beam_search
    return search(model, inputs, beam_size=beam_size, alpha=alpha, max_decode_length=length,
                  max_lengths=limits, cache_chunk=cache_chunk, length_bound=int(cap))


def greedy_decode(model, inputs, *, max_decode_length, max_lengths=None, cache_chunk=32,
                  length_bound=None):
    """Decodes by taking the most likely token at every step.

    Args:
        model: a model with the shared interface.
        inputs: [batch, S] int32 source ids.
        max_decode_length: number of tokens generated at most (buffer size): a Python
            int, or outside XLA a scalar int32 tensor with a Python int `length_bound`.
        max_lengths: optional [batch] int, a smaller limit per sentence
            (`sentence_limits`); a sentence stops there as at the buffer's end.
        cache_chunk: the model cache's first length (see "Growing caches" above).

    Returns:
        tokens: [batch, max_decode_length] int32, each sequence ending with its EOS (if
            produced within the budget) followed by pad_id.
        scores: [batch] float32 sum of the chosen tokens' log-probabilities (through EOS).
    """
    config = model.config
    inputs = tf.convert_to_tensor(inputs, tf.int32)
    batch = _static_batch(inputs)
    phases = _phase_lengths(model, max_decode_length, chunk=cache_chunk, bound=length_bound)
    cache = model.init_cache(model.encode(inputs, training=False), phases[0])
    tokens = tf.fill([batch], config.bos_id)
    sequences = tf.fill([batch, max_decode_length], config.pad_id)
    finished = tf.zeros([batch], tf.bool)
    scores = tf.zeros([batch], tf.float32)
    limits = _limits(max_lengths, batch, max_decode_length)

    def cond(i, tokens, cache, sequences, finished, scores):
        return tf.logical_not(tf.reduce_all(finished))

    def body(i, tokens, cache, sequences, finished, scores):
        logits, cache = model.decode_step(tokens, cache)
        log_probs = decoding_log_probs(logits, config)
        best = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        best_log_prob = tf.gather(log_probs, best, axis=1, batch_dims=1)
        best = tf.where(finished, config.pad_id, best)
        scores += tf.where(finished, 0.0, best_log_prob)
        sequences = _write_column(sequences, i, best)
        finished = finished | tf.equal(best, config.eos_id) | (i + 1 >= limits)
        return i + 1, best, cache, sequences, finished, scores

    _, _, _, sequences, _, scores = _in_phases(
        model, cond, body, (tf.constant(0), tokens, cache, sequences, finished, scores),
        cache_of=lambda v: v[2], with_cache=lambda v, c: (*v[:2], c, *v[3:]), phases=phases)
    return sequences, scores


class BeamState(NamedTuple):
    """The beam-search loop state (B sentences, K = beam_size, L = buffer length)."""
    tokens: tf.Tensor  # [B * K] int32: each alive hypothesis' last token, the next input
    cache: object  # the model's decoding cache, row b * K + k for hypothesis k of b
    alive_seq: tf.Tensor  # [B, K, L] int32: alive hypotheses, pad_id after their end
    alive_log_prob: tf.Tensor  # [B, K] float32; _NEG_INF for placeholder slots
    alive_is_greedy: tf.Tensor  # [B, K] bool: the hypothesis greedy search would build
    finished_seq: tf.Tensor  # [B, K, L] int32: finished hypotheses, best first
    finished_score: tf.Tensor  # [B, K] float32 length-normalized; _NEG_INF when empty
    done: tf.Tensor  # [B] bool: the sentence's finished set is frozen


class Candidates(NamedTuple):
    """One step's extensions of a sentence's alive hypotheses (C = 2 * K + 1: the top
    2 * K, then the greedy extension)."""
    log_prob: tf.Tensor  # [B, C] float32; _NEG_INF where the greedy one is a repeat
    beam: tf.Tensor  # [B, C] int32: the alive slot it extends
    token: tf.Tensor  # [B, C] int32: the token it appends
    is_greedy: tf.Tensor  # [B, C] bool
    seq: tf.Tensor  # [B, C, L] int32: the extended sequences


def beam_search(model, inputs, *, beam_size, alpha, max_decode_length, max_lengths=None,
                cache_chunk=32, length_bound=None):
    """Batched beam search with GNMT length normalization; the best hypothesis per sentence.

    Each step ranks the 2 * beam_size best extensions of the alive hypotheses. Those
    among the top `beam_size` that end in EOS leave the beam: they join the sentence's
    finished set with score log_prob / length_penalty(length including EOS) and never
    grow again. The best `beam_size` extensions not ending in EOS stay alive.

    The greedy path is protected: the hypothesis greedy search would build always keeps
    a beam slot (taking the last one if it ranks below the others) and finishes when it
    emits EOS. Plain beam search can prune it and then return something worse than
    greedy; with it protected, the result never scores below greedy search's, at the
    cost of at most one slot. beam_size=1 is exactly greedy search.

    A sentence is done once its best finished score beats anything an alive hypothesis
    can still reach, or once it has `beam_size` finished hypotheses and the greedy one
    among them; its finished set is then frozen. The loop ends when all sentences are
    done or after `max_decode_length` steps. A sentence still searching at its limit also
    considers its best alive hypothesis, truncated there and scored at that length (as
    greedy search would return it), and returns whichever scores higher.

    With `max_lengths` every decision about a sentence (its stopping bound included)
    depends on its own limit only, so its output does not depend on the batch, the
    padding or the buffer size it is decoded with.

    Args:
        model: a model with the shared interface.
        inputs: [batch, S] int32 source ids.
        beam_size: hypotheses kept per sentence (Python int).
        alpha: length-penalty exponent (>= 0); 0 ranks by plain log-probability.
        max_decode_length: number of tokens generated at most (buffer size): a Python
            int, or outside XLA a scalar int32 tensor with a Python int `length_bound`.
        max_lengths: optional [batch] int, a smaller limit per sentence
            (`sentence_limits`).
        cache_chunk: the model cache's first length (see "Growing caches" above).

    Returns:
        tokens: [batch, max_decode_length] int32, ending with EOS then pad_id.
        scores: [batch] float32 length-normalized log-probabilities.
    """
    tokens, scores = beam_search_nbest(
        model, inputs, beam_size=beam_size, alpha=alpha, max_decode_length=max_decode_length,
        max_lengths=max_lengths, cache_chunk=cache_chunk, length_bound=length_bound)
    return tokens[:, 0], scores[:, 0]


def beam_search_nbest(model, inputs, *, beam_size, alpha, max_decode_length,
                      max_lengths=None, cache_chunk=32, length_bound=None):
    """`beam_search`, returning each sentence's finished set instead of its best.

    Returns:
        tokens: [batch, beam_size, max_decode_length] int32, best first.
        scores: [batch, beam_size] float32, descending; a slot the search did not fill (it
            stopped once no alive hypothesis could beat its best) scores NO_HYPOTHESIS.
    """
    config = model.config
    inputs = tf.convert_to_tensor(inputs, tf.int32)
    batch, beam, length = _static_batch(inputs), beam_size, max_decode_length
    phases = _phase_lengths(model, length, chunk=cache_chunk, bound=length_bound)
    limits = _limits(max_lengths, batch, length)
    max_penalty = length_penalty(limits, alpha)  # [batch]: the penalty peaks at the limit
    # Beam-major offsets turn per-sentence beam indices into rows of the flat cache.
    row_offsets = (tf.range(batch) * beam)[:, None]
    # EOS may finish a hypothesis from the first `beam` candidates, and from the greedy
    # extension wherever it ranks.
    may_finish = tf.range(2 * beam + 1) < beam

    def cond(i, state):
        return tf.logical_not(tf.reduce_all(state.done))

    def body(i, state):
        logits, cache = model.decode_step(state.tokens, state.cache)
        found = _extend(state, logits, config=config, step=i, batch=batch, beam=beam)
        ends = tf.equal(found.token, config.eos_id)
        alive = _next_alive(found, ends, beam=beam)
        rows = tf.reshape(tf.gather(found.beam, alive.pick, batch_dims=1) + row_offsets, [-1])
        finishing = (ends & (may_finish | found.is_greedy)
                     & (found.log_prob > _NEG_INF / 2) & tf.logical_not(state.done)[:, None])
        finished_seq, finished_score = _keep_best(
            state.finished_seq, state.finished_score, found.seq,
            tf.where(finishing, found.log_prob / length_penalty(i + 1, alpha), _NEG_INF),
            beam=beam)
        # A sentence at its limit: its best alive hypothesis, truncated there, competes
        # as a finished one (as greedy search would return it), and the sentence is done.
        expired = tf.logical_not(state.done) & (i + 1 >= limits)
        best_alive = tf.argmax(alive.log_prob, axis=1, output_type=tf.int32)
        finished_seq, finished_score = _keep_best(
            finished_seq, finished_score,
            tf.gather(alive.seq, best_alive, batch_dims=1)[:, None],
            tf.where(expired, tf.gather(alive.log_prob, best_alive, batch_dims=1)
                     / max_penalty, _NEG_INF)[:, None], beam=beam)
        done = state.done | expired | _settled(
            alive.log_prob, alive.is_greedy, finished_score, max_penalty=max_penalty)
        return i + 1, BeamState(
            tokens=tf.reshape(alive.token, [-1]), cache=model.reorder_cache(cache, rows),
            alive_seq=alive.seq, alive_log_prob=alive.log_prob,
            alive_is_greedy=alive.is_greedy, finished_seq=finished_seq,
            finished_score=finished_score, done=done)

    state = _initial_state(model, inputs, batch=batch, beam=beam, length=length,
                           cache_length=phases[0])
    # Every sentence is done by its limit (<= the buffer length), so the finished set is
    # the answer.
    _, state = _in_phases(model, cond, body, (tf.constant(0), state),
                          cache_of=lambda v: v[1].cache,
                          with_cache=lambda v, c: (v[0], v[1]._replace(cache=c)),
                          phases=phases)
    return state.finished_seq, state.finished_score


NO_HYPOTHESIS = _NEG_INF  # the score of an n-best slot beam search left empty


def _initial_state(model, inputs, *, batch, beam, length, cache_length) -> BeamState:
    """Beam 0 of each sentence starts at BOS; the others are placeholders never chosen."""
    config = model.config
    cache = model.init_cache(model.encode(inputs, training=False), cache_length,
                             beam_size=beam)
    return BeamState(
        tokens=tf.fill([batch * beam], config.bos_id), cache=cache,
        alive_seq=tf.fill([batch, beam, length], config.pad_id),
        alive_log_prob=tf.tile(tf.constant([[0.0] + [_NEG_INF] * (beam - 1)]), [batch, 1]),
        alive_is_greedy=tf.tile(tf.range(beam)[None] < 1, [batch, 1]),
        finished_seq=tf.fill([batch, beam, length], config.pad_id),
        finished_score=tf.fill([batch, beam], _NEG_INF),
        done=tf.zeros([batch], tf.bool))


def _extend(state: BeamState, logits, *, config, step, batch, beam) -> Candidates:
    """The sentence's top 2 * beam extensions, plus the greedy hypothesis' next step
    (appended unless it is already among them).

    Each beam's best 2 * beam extensions contain every extension that can make the
    sentence's top 2 * beam, so those are ranked instead of all beam * vocab; 2 * beam
    candidates always hold `beam` that do not end in EOS.
    """
    row_log_prob, row_token = _top_log_probs(logits, config, k=2 * beam)
    per_row = row_token.shape[-1]
    row_token = tf.reshape(row_token, [batch, beam, per_row])
    candidates = tf.reshape(state.alive_log_prob[:, :, None]
                            + tf.reshape(row_log_prob, [batch, beam, per_row]),
                            [batch, beam * per_row])
    top_log_prob, top_index = tf.math.top_k(candidates, k=2 * beam)
    top_beam = top_index // per_row
    top_token = tf.gather(tf.reshape(row_token, [batch, beam * per_row]), top_index,
                          batch_dims=1)

    has_greedy = tf.reduce_any(state.alive_is_greedy, axis=1)
    greedy_slot = tf.argmax(tf.cast(state.alive_is_greedy, tf.int32), axis=1,
                            output_type=tf.int32)
    greedy_token = tf.gather(row_token[:, :, 0], greedy_slot, batch_dims=1)
    greedy_log_prob = tf.gather(candidates, greedy_slot * per_row, batch_dims=1)
    is_greedy = ((top_beam == greedy_slot[:, None]) & (top_token == greedy_token[:, None])
                 & has_greedy[:, None])
    append = has_greedy & tf.logical_not(tf.reduce_any(is_greedy, axis=1))
    token = tf.concat([top_token, greedy_token[:, None]], axis=1)
    beam_of = tf.concat([top_beam, greedy_slot[:, None]], axis=1)
    return Candidates(
        log_prob=tf.concat([top_log_prob, tf.where(append, greedy_log_prob,
                                                   _NEG_INF)[:, None]], axis=1),
        beam=beam_of, token=token,
        is_greedy=tf.concat([is_greedy, append[:, None]], axis=1),
        seq=_write_column(tf.gather(state.alive_seq, beam_of, batch_dims=1), step, token))


class _Alive(NamedTuple):
    pick: tf.Tensor  # [B, K] int32: the candidates kept alive
    log_prob: tf.Tensor  # [B, K] float32
    is_greedy: tf.Tensor  # [B, K] bool
    token: tf.Tensor  # [B, K] int32
    seq: tf.Tensor  # [B, K, L] int32


def _next_alive(found: Candidates, ends, *, beam) -> _Alive:
    """The greedy extension plus the best others that did not just end."""
    rank = tf.where(ends, _NEG_INF, tf.where(found.is_greedy, -_NEG_INF, found.log_prob))
    _, pick = tf.math.top_k(rank, k=beam)

    def gather(values):
        return tf.gather(values, pick, batch_dims=1)

    return _Alive(pick=pick, log_prob=gather(found.log_prob),
                  is_greedy=gather(found.is_greedy & tf.logical_not(ends)),
                  token=gather(found.token), seq=gather(found.seq))


def _keep_best(seq, score, new_seq, new_score, *, beam):
    """The `beam` best of a finished set [B, K(, L)] and new entries [B, N(, L)]."""
    score, pick = tf.math.top_k(tf.concat([score, new_score], axis=1), k=beam)
    return tf.gather(tf.concat([seq, new_seq], axis=1), pick, batch_dims=1), score


def _settled(alive_log_prob, alive_is_greedy, finished_score, *, max_penalty):
    """[B] bool: nothing alive can still beat the best finished hypothesis (log-probs only
    fall as hypotheses grow and the penalty peaks at the limit, alpha >= 0), or the
    finished set is full and the greedy hypothesis is in it."""
    best_reachable = tf.reduce_max(alive_log_prob, axis=1) / max_penalty
    full = (finished_score[:, -1] > _NEG_INF / 2) & tf.logical_not(
        tf.reduce_any(alive_is_greedy, axis=1))
    return full | (finished_score[:, 0] >= best_reachable)


def sequence_log_probs(model, inputs, targets):
    """Log-probability of whole target sequences under the model (teacher forcing),
    renormalized like the decoders' scores (see `decoding_log_probs`).

    Useful to rescore decoder outputs, e.g. to compare greedy and beam search.

    Args:
        model: a model with the shared interface.
        inputs: [batch, S] int32.
        targets: [batch, T] int32, ending with EOS then pad_id (as the decoders return).

    Returns:
        [batch] float32 sum of log p(token) over the non-pad target tokens.
    """
    logits = model({"inputs": inputs, "targets": targets}, training=False)
    log_probs = decoding_log_probs(logits, model.config)
    token_log_probs = tf.gather(log_probs, targets, axis=2, batch_dims=2)
    real = tf.not_equal(targets, model.config.pad_id)
    return tf.reduce_sum(tf.where(real, token_log_probs, 0.0), axis=1)
