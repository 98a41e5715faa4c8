"""The numbers behind the report's per-sentence sections, in the spirit of compare-mt:
scores by source length, word accuracy by target-word frequency, the worst and best
sentences. Pure functions over hyp-<step>.tsv rows, so each can be tested on its own."""

import collections
import statistics
from typing import NamedTuple

from launch import metrics as metrics_lib

# Frequency buckets (lower edges): unseen, once, a few, ... up to very common.
FREQUENCY_EDGES = (0, 1, 2, 5, 10, 100, 1000, 10000)


class Sentence(NamedTuple):
    """One scored input line of hyp-<step>.tsv."""
    file: str
    line: int  # 1-based line in `file`; 0 when the data did not record it
    source: str
    reference: str
    hypothesis: str
    scores: dict  # score name (chrf, or wer and per) -> float


class LengthBucket(NamedTuple):
    low: int  # inclusive
    high: int  # inclusive
    count: int
    means: dict  # score name -> mean sentence score in the bucket
    length_ratio: float  # hypothesis words / reference words over the bucket


class FrequencyBucket(NamedTuple):
    label: str
    reference_words: int  # reference word occurrences in the bucket
    hypothesis_words: int
    precision: float  # 0-100: share of hypothesis words also in the reference
    recall: float  # 0-100: share of reference words the hypothesis has
    f_measure: float


def length_unit(sources: list[str]) -> str:
    """"words", or "characters" where whitespace does not split words (one token per
    line: Chinese, Japanese) or splits single letters (spelled-out G2P input)."""
    tokens = [source.split() for source in sources if source.strip()]
    if not tokens:
        return "words"
    if statistics.median(len(t) for t in tokens) <= 1:
        return "characters"
    if all(len(piece) == 1 for t in tokens for piece in t):
        return "characters"
    return "words"


def text_length(text: str, unit: str) -> int:
    """Length of `text` in `unit` (spaces are not characters)."""
    if unit == "characters":
        return len("".join(text.split()))
    return len(text.split())


def length_buckets(lengths: list[int], *, max_buckets: int = 6) -> list[tuple[int, int]]:
    """Contiguous (low, high) ranges covering `lengths` with roughly equal counts: cut at
    quantiles, so a data set of short lines and one of long ones both get useful rows."""
    if not lengths:
        return []
    ordered = sorted(lengths)
    cuts = []  # a bucket's inclusive upper end
    for k in range(1, max_buckets):
        value = ordered[max(0, (k * len(ordered)) // max_buckets - 1)]  # k-th quantile
        if value < ordered[-1] and (not cuts or value > cuts[-1]):
            cuts.append(value)
    cuts.append(ordered[-1])
    buckets, low = [], ordered[0]
    for high in cuts:
        buckets.append((low, high))
        low = high + 1
    return buckets


def scores_by_length(sentences: list[Sentence], *, unit: str,
                     max_buckets: int = 6) -> list[LengthBucket]:
    """Mean sentence scores and the output/reference length ratio per source-length
    bucket: where do long inputs start to fail, and do they come out too short?"""
    lengths = [text_length(s.source, unit) for s in sentences]
    result = []
    for low, high in length_buckets(lengths, max_buckets=max_buckets):
        inside = [s for s, n in zip(sentences, lengths) if low <= n <= high]
        names = [name for name in (inside[0].scores if inside else {})]
        means = {name: statistics.fmean(s.scores[name] for s in inside) for name in names}
        hyp = sum(text_length(s.hypothesis, "words") for s in inside)
        ref = sum(text_length(s.reference, "words") for s in inside)
        result.append(LengthBucket(low, high, len(inside), means, hyp / max(ref, 1)))
    return result


def word_counts(texts) -> collections.Counter:
    """Whitespace-word frequencies over `texts` (references or training targets)."""
    counts = collections.Counter()
    for text in texts:
        counts.update(text.split())
    return counts


def frequency_label(index: int) -> str:
    low = FREQUENCY_EDGES[index]
    if index + 1 == len(FREQUENCY_EDGES):
        return f"{low}+"
    high = FREQUENCY_EDGES[index + 1] - 1
    return str(low) if low == high else f"{low}-{high}"


def frequency_bucket(count: int) -> int:
    """Index into FREQUENCY_EDGES of a word seen `count` times."""
    index = 0
    while index + 1 < len(FREQUENCY_EDGES) and count >= FREQUENCY_EDGES[index + 1]:
        index += 1
    return index


def frequency_accuracy(sentences: list[Sentence],
                       counts: collections.Counter) -> list[FrequencyBucket]:
    """compare-mt's word accuracy by frequency: in each sentence, hypothesis and
    reference words match as bags (each occurrence once); every word then counts in the
    bucket of its frequency in `counts`: precision over hypothesis words, recall over
    reference words. Rare words are where a model's vocabulary gives out. Buckets
    without a word in either are left out."""
    matched_ref, total_ref = collections.Counter(), collections.Counter()
    matched_hyp, total_hyp = collections.Counter(), collections.Counter()
    for sentence in sentences:
        ref = collections.Counter(sentence.reference.split())
        hyp = collections.Counter(sentence.hypothesis.split())
        common = ref & hyp
        for words, total, matched in ((ref, total_ref, matched_ref),
                                      (hyp, total_hyp, matched_hyp)):
            for word, n in words.items():
                bucket = frequency_bucket(counts.get(word, 0))
                total[bucket] += n
                matched[bucket] += common.get(word, 0)
    result = []
    for index in sorted(set(total_ref) | set(total_hyp)):  # buckets holding words
        precision = 100.0 * matched_hyp[index] / total_hyp[index] if total_hyp[index] else 0.0
        recall = 100.0 * matched_ref[index] / total_ref[index] if total_ref[index] else 0.0
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        result.append(FrequencyBucket(frequency_label(index), total_ref[index],
                                      total_hyp[index], precision, recall, f))
    return result


def extremes(sentences: list[Sentence], *, count: int) -> tuple[list, list]:
    """(worst, best) `count` sentences by their first score column, ties broken by the
    next ones and then by input order; the direction comes from the metric."""
    if not sentences:
        return [], []
    names = list(sentences[0].scores)
    signs = [1 if metrics_lib.HIGHER_IS_BETTER.get(name, True) else -1 for name in names]

    def goodness(sentence):
        return tuple(sign * sentence.scores[name] for sign, name in zip(signs, names))

    indexed = list(enumerate(sentences))
    worst = sorted(indexed, key=lambda p: (goodness(p[1]), p[0]))
    best = sorted(indexed, key=lambda p: (tuple(-g for g in goodness(p[1])), p[0]))
    return [s for _, s in worst[:count]], [s for _, s in best[:count]]
