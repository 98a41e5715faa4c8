"""The tokenizer stages: sample clean train pairs, train the tokenizer once, then encode
every batch, apply the token-length filters and key each Example by its shard.

Determinism: the tokenizer sample is the pairs with the smallest ids, and shards come from
a hash of the pair id, so neither depends on worker count or bundle order.
"""

import collections
import dataclasses
import heapq
import itertools
import logging
import os
import time
from typing import Mapping, Optional

import apache_beam as beam

from pipeline import features, progress
from pipeline import stats as stats_lib
from pipeline import tokenizer as tokenizer_lib
from pipeline.batches import count_into_metrics, pack

EXAMPLES, STATS = "examples", "stats"
_DROPPED = stats_lib.DROPPED


def tokenizer_candidates(batch):
    """(pair_id, source, target) of clean train pairs; the id doubles as a random sort key."""
    return [(pair[3], pair[1], pair[2]) for pair in batch if pair[0] == "train"]


class KeepSmallest(beam.CombineFn):
    """The `limit` candidates with the smallest keys: a bounded, deterministic sample."""

    def __init__(self, limit: int):
        self._limit = limit

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, batch):
        accumulator.extend(batch)
        if len(accumulator) > 2 * self._limit:  # duplicates (equal pairs) count once
            accumulator = heapq.nsmallest(self._limit, set(accumulator))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = []
        for accumulator in accumulators:
            merged = self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return heapq.nsmallest(self._limit, set(accumulator))


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """How to get the tokenizer: train one (vocab_size, model_type) or use given model(s)."""
    vocab_size: int = 8000
    model_type: str = "unigram"
    shared: bool = True
    sample_size: int = 1_000_000  # sentences per trained model
    source_model_path: Optional[str] = None  # given models (both the same when shared)
    target_model_path: Optional[str] = None

    @property
    def trained(self) -> bool:
        return self.source_model_path is None

    @property
    def sample_pairs(self) -> int:
        """Pairs to sample: a shared model sees both sides of each pair."""
        return max(1, self.sample_size // 2) if self.shared else self.sample_size


def train_tokenizer(sample, *, settings: TokenizerSettings) -> dict:
    """Trains the tokenizer model(s) on the sampled pairs; runs once, on one worker."""
    started = time.monotonic()
    logging.info("training %s tokenizer (%s, vocab %d) on %d pairs",
                 "a shared" if settings.shared else "separate", settings.model_type,
                 settings.vocab_size, len(sample))
    train = dict(vocab_size=settings.vocab_size, model_type=settings.model_type,
                 num_threads=max(1, os.cpu_count() or 1))
    if settings.shared:
        sentences = [text for _, source, target in sample for text in (source, target)]
        source_model = target_model = tokenizer_lib.train_model(sentences, **train)
    else:
        source_model = tokenizer_lib.train_model([p[1] for p in sample], **train)
        target_model = tokenizer_lib.train_model([p[2] for p in sample], **train)
    logging.info("trained the tokenizer in %.1fs", time.monotonic() - started)
    return tokenizer_info(source_model=source_model, target_model=target_model,
                          settings=settings, sample_pairs=len(sample))


def load_given_tokenizer(paths: tuple, *, settings: TokenizerSettings) -> dict:
    """The tokenizer side input for --tokenizer_model, read on a worker (paths, not bytes,
    travel in the pipeline graph: a pickled model would be bz2-compressed at build time)."""
    source_model = tokenizer_lib.read_model_bytes(paths[0])
    target_model = source_model if paths[1] == paths[0] else tokenizer_lib.read_model_bytes(
        paths[1])
    return tokenizer_info(source_model=source_model, target_model=target_model,
                          settings=settings)


def tokenizer_info(*, source_model: bytes, target_model: bytes, settings: TokenizerSettings,
                   sample_pairs: Optional[int] = None) -> dict:
    """The tokenizer side input: model bytes plus what metadata.json records about them."""
    return {"source_model": source_model, "target_model": target_model,
            "kind": tokenizer_lib.kind_of(source_model),
            "shared": settings.shared, "trained": settings.trained,
            "model_type": settings.model_type,
            "requested_vocab_size": settings.vocab_size if settings.trained else None,
            "sample_pairs": sample_pairs,
            "given_paths": None if settings.trained else [settings.source_model_path,
                                                          settings.target_model_path]}


class TokenizePairs(beam.DoFn):
    """Encodes a batch with the tokenizer, applies the token filters, keys it by shard.

    Output: ((split, shard), packed [(pair_id, serialized Example, input_len, target_len,
    where)]), where = (origin, line) of a dev/test pair, else None;
    one element per shard the batch touches; shard = hash(pair_id) % num_shards[split].
    """

    def __init__(self, *, max_length: int, max_length_ratio: float,
                 num_shards: Mapping[str, int], tokenizer_settings: TokenizerSettings):
        self._tokenizer_settings = tokenizer_settings
        self._max_length = max_length
        self._max_ratio = max_length_ratio
        self._num_shards = dict(num_shards)
        self._models = None
        self._encoders = None
        self._eval_keys = None

    def setup(self):
        settings = self._tokenizer_settings
        if not settings.trained:
            self._load(load_given_tokenizer(
                (settings.source_model_path, settings.target_model_path), settings=settings))

    def process(self, batch, tokenizer=None, eval_keys=None):
        source_encoder, target_encoder = (
            self._encoders if tokenizer is None else self._load(tokenizer))
        counts = collections.Counter()
        if eval_keys is not None:
            batch = self._drop_eval_overlaps(batch, eval_keys, counts)
        source_ids = source_encoder.encode([pair[1] for pair in batch])
        target_ids = target_encoder.encode([pair[2] for pair in batch])
        max_length, max_ratio, num_shards = self._max_length, self._max_ratio, self._num_shards
        eos, encode = features.EOS_ID, features.fast_encode_example
        by_shard = collections.defaultdict(list)
        for (split, source, target, pair_id, _, where), inputs, targets in zip(
                batch, source_ids, target_ids):
            shorter, longer = (len(inputs), len(targets)) if len(inputs) < len(targets) else (
                len(targets), len(inputs))
            if shorter == 0:  # text made only of characters the normalizer removes
                counts[(split, _DROPPED, stats_lib.EMPTY)] += 1
                continue
            # Length filters shape the training data only: every dev/test reference is
            # decoded and scored, however long.
            if split == "train" and longer + 1 > max_length:  # + EOS
                counts[(split, _DROPPED, stats_lib.TOO_LONG)] += 1
                continue
            if (split == "train" and max_ratio > 0 and shorter >= stats_lib.RATIO_MIN_TOKENS
                    and longer > max_ratio * shorter):
                counts[(split, _DROPPED, stats_lib.LENGTH_RATIO)] += 1
                continue
            inputs.append(eos)
            targets.append(eos)
            origin, line = where or ("", 0)
            example = encode(inputs=inputs, targets=targets, pair_id=pair_id,
                             inputs_text=source, targets_text=target, origin=origin, line=line)
            shard = int(pair_id[:8], 16) % num_shards[split]
            by_shard[(split, shard)].append((pair_id, example, len(inputs), len(targets),
                                             where))
        count_into_metrics(counts)
        for key, items in by_shard.items():
            yield key, pack(items)
        yield beam.pvalue.TaggedOutput(STATS, dict(counts))
        progress.note("tokenized", sum(map(len, by_shard.values())))

    def _load(self, tokenizer: dict):
        """Tokenizer processors, loaded once per worker (the side input is re-read)."""
        models = (tokenizer["source_model"], tokenizer["target_model"])
        if self._models != models:
            source = tokenizer_lib.load_processor(models[0])
            target = source if models[1] == models[0] else tokenizer_lib.load_processor(
                models[1])
            self._models, self._encoders = models, (source, target)
        return self._encoders

    def _drop_eval_overlaps(self, batch, eval_keys, counts):
        if self._eval_keys is None:  # global window: the side input never changes
            self._eval_keys = frozenset(itertools.chain.from_iterable(eval_keys))
        keep = []
        for pair in batch:
            if pair[0] == "train" and pair[4] in self._eval_keys:
                counts[("train", _DROPPED, stats_lib.OVERLAPS_EVAL)] += 1
            else:
                keep.append(pair)
        return keep
