"""models/decoding.py: greedy and beam search against references and the models."""

import itertools
import math
import types

import numpy as np
import pytest
import tensorflow as tf

from models import decoding
from tiny_models import BOS, EOS, MODELS, PAD, VOCAB, build



class TableModel:
    """Toy model: next-token logits read from a fixed table[sentence, step, previous token].

    The sentence index travels in the cache, so wrong beam reordering gives wrong logits.
    """

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)  # [batch, steps, vocab, vocab]
        self.config = types.SimpleNamespace(pad_id=PAD, eos_id=EOS, bos_id=BOS)

    def encode(self, inputs, training=False):
        return {"sentence": tf.range(tf.shape(inputs)[0])}

    def init_cache(self, encoded, max_decode_length, beam_size=1):
        sentence = tf.repeat(encoded["sentence"], beam_size)
        return {"sentence": sentence, "step": tf.zeros_like(sentence)}

    def reorder_cache(self, cache, rows):
        return {key: tf.gather(value, rows) for key, value in cache.items()}

    def decode_step(self, tokens, cache):
        index = tf.stack([cache["sentence"], cache["step"], tokens], axis=1)
        return tf.gather_nd(self.table, index), dict(cache, step=cache["step"] + 1)


def table_log_prob(table, sentence, tokens):
    """Log-prob of `tokens` under the toy model with the decoders' pad/bos ban."""
    total, previous = 0.0, BOS
    for step, token in enumerate(tokens):
        logits = np.array(table[sentence, step, previous], np.float64)
        logits[[PAD, BOS]] = -np.inf
        total += logits[token] - math.log(np.exp(logits[np.isfinite(logits)]).sum())
        previous = token
    return total


def random_table(seed, *, batch=3, steps=4, vocab=5, scale=2.0):
    return np.random.default_rng(seed).normal(scale=scale, size=[batch, steps, vocab, vocab])


def test_max_decode_length_helpers():
    assert decoding.max_decode_length(20, ratio=1.5, offset=10, cap=256) == 40
    assert decoding.max_decode_length(21, ratio=1.5, offset=10, cap=256) == 42  # ceil(41.5)
    assert decoding.max_decode_length(300, ratio=1.5, offset=10, cap=256) == 256
    inputs = tf.constant([[5, 6, 7, 0, 0, 0], [5, 6, 0, 0, 0, 0]])
    assert decoding.batch_max_decode_length(inputs, ratio=2.0, offset=1, cap=100) == 7


def test_greedy_matches_reference_and_pads_after_eos():
    table = random_table(0, batch=4, steps=6)
    tokens, scores = decoding.greedy_decode(TableModel(table), tf.zeros([4, 1], tf.int32),
                                            max_decode_length=6)
    for sentence in range(4):
        expected, previous = [], BOS
        for step in range(6):
            logits = table[sentence, step, previous].copy()
            logits[[PAD, BOS]] = -np.inf
            previous = int(np.argmax(logits))
            expected.append(previous)
            if previous == EOS:
                break
        assert tokens[sentence].numpy().tolist() == expected + [PAD] * (6 - len(expected))
        np.testing.assert_allclose(float(scores[sentence]),
                                   table_log_prob(table, sentence, expected), rtol=1e-5)
    assert (tokens.numpy() == EOS).any(), "this table should produce an EOS somewhere"


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_optimum(alpha):
    steps = 4
    table = random_table(1, steps=steps)
    tokens, scores = decoding.beam_search(TableModel(table), tf.zeros([3, 1], tf.int32),
                                          beam_size=32, alpha=alpha, max_decode_length=steps)
    for sentence in range(3):
        # Every hypothesis: words then EOS, or `steps` words cut off by the budget.
        hypotheses = [list(words) + [EOS] for length in range(steps)
                      for words in itertools.product([3, 4], repeat=length)]
        hypotheses += [list(words) for words in itertools.product([3, 4], repeat=steps)]
        best, best_score = None, -np.inf
        for candidate in hypotheses:
            score = (table_log_prob(table, sentence, candidate)
                     / ((5.0 + len(candidate)) / 6.0) ** alpha)
            if score > best_score:
                best, best_score = candidate, score
        assert tokens[sentence].numpy().tolist() == best + [PAD] * (steps - len(best))
        np.testing.assert_allclose(float(scores[sentence]), best_score, rtol=1e-5)


def test_nbest_lists_distinct_hypotheses_best_first_with_their_true_scores():
    steps, alpha = 4, 0.6
    table = random_table(3, steps=steps)
    model, inputs = TableModel(table), tf.zeros([3, 1], tf.int32)
    tokens, scores = decoding.beam_search_nbest(model, inputs, beam_size=4, alpha=alpha,
                                                max_decode_length=steps)
    best, best_score = decoding.beam_search(model, inputs, beam_size=4, alpha=alpha,
                                            max_decode_length=steps)
    assert tokens.shape == [3, 4, steps] and scores.shape == [3, 4]
    np.testing.assert_array_equal(tokens[:, 0], best)
    np.testing.assert_array_equal(scores[:, 0], best_score)
    filled = 0
    for sentence in range(3):
        row = scores[sentence].numpy()
        assert list(row) == sorted(row, reverse=True)
        seen = set()
        for hypothesis, score in zip(tokens[sentence].numpy().tolist(), row):
            if score <= decoding.NO_HYPOTHESIS / 2:
                continue
            filled += 1
            words = [t for t in hypothesis if t != PAD]
            assert tuple(words) not in seen
            seen.add(tuple(words))
            expected = (table_log_prob(table, sentence, words)
                        / ((5.0 + len(words)) / 6.0) ** alpha)
            assert score == pytest.approx(expected, rel=1e-5)
    assert filled > 3  # some sentence has more than one hypothesis


@pytest.mark.parametrize("seed", range(5))
def test_beam_of_one_is_greedy_on_tables(seed):
    table = random_table(seed, batch=4, steps=7, vocab=6, scale=1.0)
    model, inputs = TableModel(table), tf.zeros([4, 1], tf.int32)
    greedy = decoding.greedy_decode(model, inputs, max_decode_length=7)
    beam = decoding.beam_search(model, inputs, beam_size=1, alpha=0.0, max_decode_length=7)
    np.testing.assert_array_equal(beam[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam[1].numpy(), greedy[1].numpy(), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_never_scores_below_greedy_on_random_tables(alpha):
    """Plain beam search can prune the greedy path and lose to greedy on near-ties;
    near-uniform random tables produce many. The protected greedy slot prevents it."""
    for seed in range(8):
        table = random_table(seed, batch=16, steps=7, vocab=8, scale=0.7)
        model, inputs = TableModel(table), tf.zeros([16, 1], tf.int32)
        greedy, _ = decoding.greedy_decode(model, inputs, max_decode_length=7)
        beam, beam_scores = decoding.beam_search(model, inputs, beam_size=3, alpha=alpha,
                                                 max_decode_length=7)
        for sentence in range(16):
            def score(tokens):
                tokens = [t for t in tokens if t != PAD]
                return (table_log_prob(table, sentence, tokens)
                        / ((5.0 + len(tokens)) / 6.0) ** alpha)
            beam_score = score(beam[sentence].numpy())
            np.testing.assert_allclose(float(beam_scores[sentence]), beam_score, rtol=1e-5)
            assert beam_score >= score(greedy[sentence].numpy()) - 1e-5, (seed, sentence)


def sources(seed=0, rows=6, width=5):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=[rows, width]).astype(np.int32)
    for row in range(rows):
        ids[row, 1 + row % (width - 1):] = PAD
    return tf.constant(ids)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_beam_of_one_is_greedy_on_models(name):
    model, inputs = build(name), sources()
    greedy = decoding.greedy_decode(model, inputs, max_decode_length=8)
    beam = decoding.beam_search(model, inputs, beam_size=1, alpha=0.0, max_decode_length=8)
    np.testing.assert_array_equal(beam[0].numpy(), greedy[0].numpy())
    np.testing.assert_allclose(beam[1].numpy(), greedy[1].numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_beam_never_scores_below_greedy_under_the_model(name):
    model, inputs = build(name), sources(1, rows=8)
    greedy_tokens, greedy_scores = decoding.greedy_decode(model, inputs, max_decode_length=8)
    beam_tokens, beam_scores = decoding.beam_search(model, inputs, beam_size=4, alpha=0.0,
                                                    max_decode_length=8)
    rescored_greedy = decoding.sequence_log_probs(model, inputs, greedy_tokens).numpy()
    rescored_beam = decoding.sequence_log_probs(model, inputs, beam_tokens).numpy()
    # The decoders' incremental scores agree with teacher-forced rescoring ...
    np.testing.assert_allclose(greedy_scores.numpy(), rescored_greedy, atol=1e-4)
    np.testing.assert_allclose(beam_scores.numpy(), rescored_beam, atol=1e-4)
    # ... and beam search never loses to greedy (and wins somewhere on this batch).
    assert (rescored_beam >= rescored_greedy - 1e-4).all()
    assert (rescored_beam > rescored_greedy + 1e-3).any()
    for row in beam_tokens.numpy():  # EOS (if any) is followed by padding only
        ends = np.flatnonzero(row == EOS)
        if ends.size:
            assert (row[ends[0] + 1:] == PAD).all() and PAD not in row[:ends[0]]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decoders_compile_with_xla_and_match_eager(name):
    model, inputs = build(name), sources(2)

    def decode(x):
        return (decoding.greedy_decode(model, x, max_decode_length=7),
                decoding.beam_search(model, x, beam_size=3, alpha=0.6, max_decode_length=7))

    (greedy, beam), (jit_greedy, jit_beam) = decode(inputs), tf.function(
        decode, jit_compile=True)(inputs)
    for eager, jit in ((greedy, jit_greedy), (beam, jit_beam)):
        assert jit[0].shape == (6, 7) and jit[1].shape == (6,)
        np.testing.assert_array_equal(jit[0].numpy(), eager[0].numpy())
        np.testing.assert_allclose(jit[1].numpy(), eager[1].numpy(), atol=1e-5)


class PrefixModel:
    """Decodes without a cache: each step re-runs the full teacher-forced pass over the
    hypothesis' tokens so far, so its beam search cannot depend on cache bookkeeping."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def encode(self, inputs, training=False):
        return {"inputs": inputs}

    def init_cache(self, encoded, max_decode_length, beam_size=1):
        inputs = tf.repeat(encoded["inputs"], beam_size, axis=0)
        rows = tf.shape(inputs)[0]
        return {"inputs": inputs, "step": tf.zeros([rows], tf.int32),
                "prefix": tf.fill([rows, max_decode_length], PAD)}

    def decode_step(self, tokens, cache):
        step, prefix = cache["step"], cache["prefix"]
        previous = tf.equal(tf.range(prefix.shape[1])[None, :], step[:, None] - 1)
        prefix = tf.where(previous, tokens[:, None], prefix)  # tokens[0] is BOS: not kept
        logits = self.model({"inputs": cache["inputs"], "targets": prefix}, training=False)
        logits = tf.gather(logits, step, axis=1, batch_dims=1)
        return logits, dict(cache, step=step + 1, prefix=prefix)

    def reorder_cache(self, cache, rows):
        return {key: tf.gather(value, rows) for key, value in cache.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_beam_search_equals_recomputing_every_prefix(name):
    model, inputs = build(name), sources(3, rows=4)
    cached = decoding.beam_search(model, inputs, beam_size=3, alpha=0.6, max_decode_length=7)
    reference = decoding.beam_search(PrefixModel(model), inputs, beam_size=3, alpha=0.6,
                                     max_decode_length=7)
    np.testing.assert_array_equal(cached[0].numpy(), reference[0].numpy())
    np.testing.assert_allclose(cached[1].numpy(), reference[1].numpy(), atol=1e-5)


def output_length(row) -> int:
    """Tokens up to and including EOS (the tokens before the padding without one)."""
    ends = np.flatnonzero(row == EOS)
    return int(ends[0]) + 1 if ends.size else int(np.sum(row != PAD))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_sentence_limits_make_outputs_independent_of_the_batch(name):
    """Decoded alone (tight buffer, no padding) or in a padded batch with a large buffer,
    a sentence gets the same hypothesis: its limit comes from its own length."""
    model, inputs = build(name), sources(3, rows=6, width=5)
    limits = decoding.sentence_limits(inputs, pad_id=PAD, ratio=1.0, offset=2, cap=64)
    together = decoding.beam_search(model, inputs, beam_size=3, alpha=0.6,
                                    max_decode_length=16, max_lengths=limits)
    for row in range(inputs.shape[0]):
        real = int(np.sum(inputs[row].numpy() != PAD))
        alone_inputs = inputs[row:row + 1, :real]
        alone = decoding.beam_search(
            model, alone_inputs, beam_size=3, alpha=0.6, max_decode_length=int(limits[row]),
            max_lengths=decoding.sentence_limits(alone_inputs, pad_id=PAD, ratio=1.0,
                                                 offset=2, cap=64))
        width = int(limits[row])
        np.testing.assert_array_equal(together[0][row, :width].numpy(), alone[0][0].numpy())
        assert (together[0][row, width:].numpy() == PAD).all()
        np.testing.assert_allclose(together[1][row].numpy(), alone[1][0].numpy(), rtol=1e-5)


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_limits_give_the_fixed_budget_hypotheses_wherever_both_finish(decoder):
    if decoder == "greedy":  # a toy table that ends some sentences early and not others
        model = TableModel(random_table(5, batch=16, steps=12, vocab=6, scale=3.0))
        inputs = tf.constant([[3] * (1 + row % 6) + [PAD] * (5 - row % 6)
                              for row in range(16)], tf.int32)
        limits = decoding.sentence_limits(inputs, pad_id=PAD, ratio=1.0, offset=1, cap=64)
    else:
        model, inputs = build("transformer"), sources(4, rows=16)
        limits = decoding.sentence_limits(inputs, pad_id=PAD, ratio=1.0, offset=3, cap=64)

    def decode(**kwargs):
        if decoder == "greedy":
            return decoding.greedy_decode(model, inputs, max_decode_length=12, **kwargs)
        return decoding.beam_search(model, inputs, beam_size=4, alpha=0.6,
                                    max_decode_length=24, **kwargs)

    (fixed, fixed_scores), (limited, limited_scores) = decode(), decode(max_lengths=limits)
    compared, cut = 0, 0
    for row in range(inputs.shape[0]):
        limit = int(limits[row])
        within = output_length(fixed[row].numpy()) <= limit
        finished = output_length(limited[row].numpy()) < limit or EOS in limited[row].numpy()
        if within and (decoder == "greedy" or finished):  # both finished within the limit
            compared += 1
            np.testing.assert_array_equal(limited[row].numpy(), fixed[row].numpy())
            np.testing.assert_allclose(limited_scores[row], fixed_scores[row], rtol=1e-5)
        cut += not within
        assert output_length(limited[row].numpy()) <= limit
    assert compared >= 2 and cut >= 1  # both cases occur in this batch


def test_buffer_lengths_double_from_the_chunk_and_end_at_the_length():
    assert decoding.buffer_lengths(12, chunk=2) == [2, 4, 12]  # 8 would save under a third
    assert decoding.buffer_lengths(394, chunk=32) == [32, 64, 128, 256, 394]
    assert decoding.buffer_lengths(40, chunk=32) == [40]
    assert decoding.buffer_lengths(7, chunk=32) == [7]


class GrowthRecorder:
    """Delegates to a model and records the buffer lengths its cache grows to."""

    def __init__(self, model):
        self.model, self.config, self.grown = model, model.config, []
        self.encode, self.decode_step = model.encode, model.decode_step
        self.reorder_cache = model.reorder_cache

    def init_cache(self, encoded, max_decode_length, beam_size=1):
        self.grown.append(max_decode_length)
        return self.model.init_cache(encoded, max_decode_length, beam_size=beam_size)

    def grow_cache(self, cache, length):
        self.grown.append(length)
        grown = self.model.grow_cache(cache, length)
        assert grown["key_0"].shape[1] == grown["history"].shape[2] == length
        return grown


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_growing_caches_give_the_outputs_of_one_full_buffer(jit):
    """Outputs running past the first chunks equal those of a buffer preallocated whole."""
    model, inputs = build("transformer"), sources(6, rows=8)
    limits = decoding.sentence_limits(inputs, pad_id=PAD, ratio=2.0, offset=8, cap=64)
    recorder = GrowthRecorder(model)

    def decode(chunk):
        def run(x):
            return (decoding.greedy_decode(recorder, x, max_decode_length=18, cache_chunk=chunk),
                    decoding.beam_search(recorder, x, beam_size=3, alpha=0.6,
                                         max_decode_length=18, max_lengths=limits,
                                         cache_chunk=chunk))
        return tf.function(run, jit_compile=True)(inputs) if jit else run(inputs)

    whole = decode(64)
    assert recorder.grown == [18, 18]
    recorder.grown.clear()
    grown = decode(3)
    assert recorder.grown == [3, 6, 18] * 2
    for full, phased in zip(whole, grown):
        np.testing.assert_array_equal(phased[0].numpy(), full[0].numpy())
        np.testing.assert_allclose(phased[1].numpy(), full[1].numpy(), atol=1e-5)
        assert max(output_length(row) for row in full[0].numpy()) > 6  # reached the last phase


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_dynamic_trace_decodes_every_length_as_the_static_decoder(name):
    """Outside XLA one trace with a dynamic source length serves every batch, its
    buffers sized by the batch's longest limit, and matches the per-bucket decoder."""
    model = build(name)
    budget = dict(beam_size=3, alpha=0.6, ratio=2.0, offset=4, cap=40, cache_chunk=4)
    dynamic = tf.function(lambda x: decoding.length_bounded_beam_search(model, x, **budget),
                          input_signature=[tf.TensorSpec([None, None], tf.int32)])
    for width in (3, 5, 9):
        inputs = sources(7, rows=4, width=width)
        static_tokens, static_scores = decoding.length_bounded_beam_search(model, inputs,
                                                                           **budget)
        tokens, scores = dynamic(inputs)
        longest_limit = int(np.max(decoding.sentence_limits(
            inputs, pad_id=PAD, ratio=2.0, offset=4, cap=40)))
        assert tokens.shape == (4, longest_limit)
        assert static_tokens.shape == (4, decoding.max_decode_length(width, ratio=2.0,
                                                                      offset=4, cap=40))
        np.testing.assert_array_equal(static_tokens[:, :longest_limit].numpy(), tokens.numpy())
        assert (static_tokens[:, longest_limit:].numpy() == PAD).all()
        np.testing.assert_allclose(scores.numpy(), static_scores.numpy(), atol=1e-5)
    assert dynamic.experimental_get_tracing_count() == 1
