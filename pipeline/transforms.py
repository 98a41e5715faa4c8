"""Beam DoFns and CombineFns of the preprocess job: read, clean, split, tokenize, shard, write.

Work moves through the pipeline in batches (lists of plain tuples) rather than one pair per
element: DirectRunner and Dataflow pay a fixed cost per element and per DoFn call, and
SentencePiece encodes a list of texts far faster than a Python loop. Every record that is
not written is counted by reason, both in Beam Metrics counters and in a `stats` side output
that ends up in metadata.json, so nothing is dropped silently:
per split, read == written + sum(dropped).

Determinism: splits come from a hash of the source text, shards from a hash of the pair id,
and each shard is sorted by id before it is written, so the same input gives byte-identical
shards whatever the number of workers or the order in which bundles run.
"""

import collections
import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import os
import pickle
import re
import time
import uuid
from operator import itemgetter
from typing import Mapping, Optional

import apache_beam as beam

from pipeline import features, sources
from pipeline import tokenizer as tokenizer_lib

# Drop reasons, in the order the checks run (a pair is counted under the first that applies).
# Readers add their own skip reasons (sources.READER_SKIP_REASONS), counted the same way.
MALFORMED = sources.MALFORMED
INVALID_UTF8 = "invalid_utf8"
EMPTY = "empty"
CONTROL_CHARS = "control_chars"
OVERLAPS_EVAL = "overlaps_eval"
TOO_LONG = "too_long"
LENGTH_RATIO = "length_ratio"
DUPLICATE = "duplicate"
CORE_REASONS = (MALFORMED, INVALID_UTF8, EMPTY, CONTROL_CHARS, OVERLAPS_EVAL, TOO_LONG,
                LENGTH_RATIO, DUPLICATE)
DEAD_LETTER_REASONS = (INVALID_UTF8, MALFORMED, CONTROL_CHARS)

# The length-ratio filter only looks at pairs whose shorter side has at least this many
# subword tokens: "OK" -> "In Ordnung" is a fine pair, and ratios of tiny counts are noise.
RATIO_MIN_TOKENS = 3

METRICS_NAMESPACE = "s2s_preprocess"
DEAD_LETTER = "dead_letter"  # grouping key and directory of the dead-letter file
STATS = "stats"  # grouping key of the per-batch counts
DEAD_LETTER_FILE = "dead_letter/dead_letter.jsonl"
HISTOGRAM_BUCKET_WIDTH = 8
PROGRESS_EVERY = 100_000

# Stats keys are tuples: (split, "read"), (split, "written"), (split, "normalized"),
# (split, "dropped", reason), (split, "input_tokens"|"target_tokens"),
# (split, "len_inputs"|"len_targets"|"len_max", length).
READ, WRITTEN, NORMALIZED, DROPPED = "read", "written", "normalized", "dropped"

# Whitespace-like control characters become spaces; any other C0/C1 control drops the pair.
_WHITESPACE_CONTROLS = re.compile("[\t\n\x0b\x0c\r\x85\u2028\u2029]")
_OTHER_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def pack(batch: list) -> bytes:
    """A batch as one bytes value for a shuffle.

    Beam's generic coder dispatches on the type of every field of every tuple; one pickle
    call does the whole list in C, which makes this job's shuffles much cheaper. Only our own DoFns
    read these values, on workers running the same Python version.
    """
    return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> list:
    return pickle.loads(blob)


def count_into_metrics(counts: Mapping) -> None:
    """Mirrors the read/written/dropped stats into Beam Metrics counters (visible live)."""
    for key, value in counts.items():
        if key[1] in (READ, WRITTEN, NORMALIZED):
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{key[0]}/{key[1]}").inc(value)
        elif key[1] == DROPPED:
            beam.metrics.Metrics.counter(
                METRICS_NAMESPACE, f"{key[0]}/dropped/{key[2]}").inc(value)


# --------------------------------------------------------------------------------------------
# Reading


class ReadBatches(beam.DoFn):
    """Reads one unit (file or dataset split) and emits packed lists of batch_size records."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def process(self, unit):
        started, count, batch = time.monotonic(), 0, []
        name = getattr(unit, "path", None) or unit
        for record in unit.read():
            batch.append(tuple(record))  # NamedTuple -> tuple: pickles without class lookups
            if len(batch) >= self._batch_size:
                count += len(batch)
                yield pack(batch)
                batch = []
                if count % (10 * PROGRESS_EVERY) < self._batch_size:
                    logging.info("progress: read %d records from %s", count, name)
        if batch:
            count += len(batch)
            yield pack(batch)
        elapsed = time.monotonic() - started
        log = logging.info if count >= PROGRESS_EVERY or elapsed > 10 else logging.debug
        log("read %d records from %s in %.1fs", count, name, elapsed)


# --------------------------------------------------------------------------------------------
# Splits


@dataclasses.dataclass(frozen=True)
class SplitFractions:
    """Carves dev/test out of train by a hash of the normalized source text.

    h = sha256(source.strip().lower()); u = h % 100 + (h // 100 % 10000) / 10000 in [0, 100);
    test if u < 100 * test, dev if u < 100 * (test + dev), else train. Integer arithmetic on
    u * 10000 keeps whole percents exact: test=0.05 means exactly h % 100 < 5.
    """
    dev: float = 0.0
    test: float = 0.0

    def assign(self, digest: bytes) -> str:
        h = int.from_bytes(digest, "big")
        position = (h % 100) * 10000 + (h // 100) % 10000
        if position < round(self.test * 1_000_000):
            return "test"
        if position < round((self.test + self.dev) * 1_000_000):
            return "dev"
        return "train"


def source_digest(source: str) -> bytes:
    """sha256 of the source as splits and eval-overlap checks see it (stripped, lowercased)."""
    return hashlib.sha256(source.strip().lower().encode("utf-8")).digest()


def split_of(source: str, fractions: SplitFractions) -> str:
    return fractions.assign(source_digest(source))


# --------------------------------------------------------------------------------------------
# Cleaning (everything that does not need tokens)


class CleanPairs(beam.DoFn):
    """Decodes, normalizes and filters a batch of raw records; assigns carved splits.

    Main output: lists of (split, source, target, pair_id, source_key) with clean, stripped
    text. Side outputs: `dead_letter` (unreadable records with origin and line) and `stats`
    (counts), both keyed for the shard writer's GroupByKey, and `eval_keys` (source keys of
    dev/test pairs, to drop train pairs that repeat them).
    """

    def __init__(self, *, fractions: Optional[SplitFractions], emit_eval_keys: bool):
        self._fractions = fractions
        self._emit_eval_keys = emit_eval_keys

    def process(self, batch):
        counts = collections.Counter()
        kept, dead, eval_keys = [], [], []
        read = collections.Counter()
        fractions, emit_eval_keys = self._fractions, self._emit_eval_keys
        need_keys = fractions is not None or emit_eval_keys
        any_control, fingerprint = _ANY_CONTROL.search, features.fingerprint
        for split, origin, number, raw_source, raw_target, problem in unpack(batch):
            if problem and problem not in sources.TRAIN_ONLY_SKIP_REASONS:
                read[split] += 1
                counts[(split, DROPPED, problem)] += 1
                if problem in DEAD_LETTER_REASONS:
                    dead.append(_dead_letter(problem, split=split, origin=origin, number=number,
                                             raw_source=raw_source, raw_target=raw_target))
                continue
            try:
                source = raw_source.decode("utf-8") if type(raw_source) is bytes else raw_source
                target = raw_target.decode("utf-8") if type(raw_target) is bytes else raw_target
            except UnicodeDecodeError as error:
                read[split] += 1
                counts[(split, DROPPED, INVALID_UTF8)] += 1
                dead.append(_dead_letter(INVALID_UTF8, split=split, origin=origin, number=number,
                                         raw_source=raw_source, raw_target=raw_target,
                                         detail=str(error)))
                continue
            has_control = any_control(source) or any_control(target)
            normalized = False
            if has_control:  # rare: the common path does no per-character work in Python
                source, target, normalized = _normalize_whitespace(source, target)
            source, target = source.strip(), target.strip()
            if need_keys:  # the split hash and the eval-overlap key
                digest = hashlib.sha256(source.lower().encode("utf-8")).digest()
                if fractions is not None and split == "train":
                    split = fractions.assign(digest)
            read[split] += 1
            if problem and split == "train":  # a further reference: only dev/test keep it
                counts[(split, DROPPED, problem)] += 1
                continue
            if normalized:
                counts[(split, NORMALIZED)] += 1
            if not source or not target:
                counts[(split, DROPPED, EMPTY)] += 1
                continue
            if has_control and (_OTHER_CONTROLS.search(source)
                                or _OTHER_CONTROLS.search(target)):
                counts[(split, DROPPED, CONTROL_CHARS)] += 1
                dead.append(_dead_letter(CONTROL_CHARS, split=split, origin=origin,
                                         number=number, raw_source=raw_source,
                                         raw_target=raw_target))
                continue
            key = digest[:16] if need_keys else b""
            kept.append((split, source, target, fingerprint(source, target), key))
            if emit_eval_keys and split != "train":
                eval_keys.append(key)
        for split, count in read.items():
            counts[(split, READ)] += count
        count_into_metrics(counts)
        if kept:
            yield kept
        if dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, ((DEAD_LETTER, 0), dead))
        if eval_keys:
            yield beam.pvalue.TaggedOutput("eval_keys", eval_keys)
        yield beam.pvalue.TaggedOutput("stats", ((STATS, 0), dict(counts)))


def _normalize_whitespace(source: str, target: str) -> tuple:
    """Whitespace-like controls (tab, CR, LF, VT, FF, NEL, U+2028/9) -> one space each."""
    new_source = _WHITESPACE_CONTROLS.sub(" ", source)
    new_target = _WHITESPACE_CONTROLS.sub(" ", target)
    return new_source, new_target, new_source != source or new_target != target


def _dead_letter(reason, *, split, origin, number, raw_source, raw_target, detail=""):
    """A dead-letter row: sorts by (origin, number) so the file is deterministic."""
    return (origin, number, split, reason, repr(raw_source),
            None if raw_target is None else repr(raw_target), detail)


# --------------------------------------------------------------------------------------------
# Tokenizer training sample


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
    """Trains the SentencePiece model(s) on the sampled pairs; runs once, on one worker."""
    started = time.monotonic()
    logging.info("training %s SentencePiece (%s, vocab %d) on %d pairs",
                 "a shared" if settings.shared else "separate", settings.model_type,
                 settings.vocab_size, len(sample))
    train = dict(vocab_size=settings.vocab_size, model_type=settings.model_type,
                 num_threads=max(1, os.cpu_count() or 1))
    if settings.shared:
        sentences = [text for _, source, target in sample for text in (source, target)]
        source_model = target_model = tokenizer_lib.train_sentencepiece(sentences, **train)
    else:
        source_model = tokenizer_lib.train_sentencepiece([p[1] for p in sample], **train)
        target_model = tokenizer_lib.train_sentencepiece([p[2] for p in sample], **train)
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
            "shared": settings.shared, "trained": settings.trained,
            "model_type": settings.model_type,
            "requested_vocab_size": settings.vocab_size if settings.trained else None,
            "sample_pairs": sample_pairs,
            "given_paths": None if settings.trained else [settings.source_model_path,
                                                          settings.target_model_path]}


# --------------------------------------------------------------------------------------------
# Tokenize, length filters, Example encoding, shard assignment


class TokenizePairs(beam.DoFn):
    """Encodes a batch with SentencePiece, applies the token filters, keys it by shard.

    Output: ((split, shard), packed [(pair_id, serialized Example, input_len, target_len)]),
    one element per shard the batch touches; shard = hash(pair_id) % num_shards[split].
    """

    _processed = 0  # per worker process, for progress lines
    _started = None

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
        for (split, source, target, pair_id, _), inputs, targets in zip(
                batch, source_ids, target_ids):
            shorter, longer = (len(inputs), len(targets)) if len(inputs) < len(targets) else (
                len(targets), len(inputs))
            if shorter == 0:  # text made only of characters the normalizer removes
                counts[(split, DROPPED, EMPTY)] += 1
                continue
            # Length filters shape the training data only: every dev/test reference is
            # decoded and scored, however long.
            if split == "train" and longer + 1 > max_length:  # + EOS
                counts[(split, DROPPED, TOO_LONG)] += 1
                continue
            if (split == "train" and max_ratio > 0 and shorter >= RATIO_MIN_TOKENS
                    and longer > max_ratio * shorter):
                counts[(split, DROPPED, LENGTH_RATIO)] += 1
                continue
            inputs.append(eos)
            targets.append(eos)
            example = encode(inputs=inputs, targets=targets, pair_id=pair_id,
                             inputs_text=source, targets_text=target)
            shard = int(pair_id[:8], 16) % num_shards[split]
            by_shard[(split, shard)].append((pair_id, example, len(inputs), len(targets)))
        count_into_metrics(counts)
        for key, items in by_shard.items():
            yield key, pack(items)
        yield beam.pvalue.TaggedOutput("stats", ((STATS, 0), dict(counts)))
        self._log_progress(len(batch))

    def _load(self, tokenizer: dict):
        """SentencePiece processors, loaded once per worker (the side input is re-read)."""
        models = (tokenizer["source_model"], tokenizer["target_model"])
        if self._models != models:
            source = tokenizer_lib.load_sentencepiece(models[0])
            target = source if models[1] == models[0] else tokenizer_lib.load_sentencepiece(
                models[1])
            self._models, self._encoders = models, (source, target)
        return self._encoders

    def _drop_eval_overlaps(self, batch, eval_keys, counts):
        if self._eval_keys is None:  # global window: the side input never changes
            self._eval_keys = frozenset(itertools.chain.from_iterable(eval_keys))
        keep = []
        for pair in batch:
            if pair[0] == "train" and pair[4] in self._eval_keys:
                counts[("train", DROPPED, OVERLAPS_EVAL)] += 1
            else:
                keep.append(pair)
        return keep

    @classmethod
    def _log_progress(cls, count: int) -> None:
        if cls._started is None:
            cls._started = time.monotonic()
        before, cls._processed = cls._processed, cls._processed + count
        if before // PROGRESS_EVERY != cls._processed // PROGRESS_EVERY:
            elapsed = max(time.monotonic() - cls._started, 1e-9)
            logging.info("progress: tokenized %d pairs in this worker (%.0f pairs/s)",
                         cls._processed, cls._processed / elapsed)


# --------------------------------------------------------------------------------------------
# Writing


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


class WriteShards(beam.DoFn):
    """Writes one shard (sorted by id, duplicates dropped) or the dead-letter file; sums stats.

    Every output element is a stats dict; together they are all the counts of the job.

    Each file is written under a temporary name and renamed into place, so a reader never
    sees half a shard and a retried bundle simply rewrites the same bytes.
    """

    def __init__(self, *, output_dir: str, num_shards: Mapping[str, int]):
        self._output_dir = output_dir
        self._num_shards = dict(num_shards)

    def process(self, element):
        (split, shard), groups = element
        if split == DEAD_LETTER:
            yield self._write_dead_letters(itertools.chain.from_iterable(groups))
            return
        if split == STATS:
            yield merge_counts(groups)
            return
        import tensorflow as tf  # the writer's C++ TFRecord framing (crc32c) is fastest
        items = sorted(itertools.chain.from_iterable(map(unpack, groups)), key=itemgetter(0))
        path = os.path.join(self._output_dir, shard_name(split, shard, self._num_shards[split]))
        temp = _temp_name(path)
        input_lengths, target_lengths = [], []
        previous, duplicates = None, 0
        with tf.io.TFRecordWriter(temp) as writer:
            write = writer.write
            for pair_id, example, input_len, target_len in items:
                if pair_id == previous:
                    duplicates += 1
                    continue
                previous = pair_id
                write(example)
                input_lengths.append(input_len)
                target_lengths.append(target_len)
        tf.io.gfile.rename(temp, path, overwrite=True)
        counts = collections.Counter({(split, WRITTEN): len(input_lengths),
                                      (split, DROPPED, DUPLICATE): duplicates,
                                      (split, "input_tokens"): sum(input_lengths),
                                      (split, "target_tokens"): sum(target_lengths)})
        for name, lengths in (("len_inputs", input_lengths), ("len_targets", target_lengths),
                              ("len_max", map(max, input_lengths, target_lengths))):
            for length, count in collections.Counter(lengths).items():
                counts[(split, name, length)] = count
        count_into_metrics(counts)
        yield dict(counts)

    def _write_dead_letters(self, rows) -> dict:
        import tensorflow as tf
        rows = sorted(rows, key=lambda row: (row[0], row[1], row[3]))
        if not rows:
            return {}
        path = os.path.join(self._output_dir, DEAD_LETTER_FILE)
        tf.io.gfile.makedirs(os.path.dirname(path))
        temp = _temp_name(path)
        with tf.io.gfile.GFile(temp, "w") as stream:
            for origin, number, split, reason, source, target, detail in rows:
                stream.write(json.dumps({
                    "source_file": origin, "line": number, "split": split, "reason": reason,
                    "source": source, "target": target, "detail": detail},
                    ensure_ascii=False) + "\n")
        tf.io.gfile.rename(temp, path, overwrite=True)
        return {(DEAD_LETTER, WRITTEN): len(rows)}


def _temp_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")


# --------------------------------------------------------------------------------------------
# Stats and the final metadata


def merge_counts(dicts) -> dict:
    """Sums stats dicts (tuple key -> count); also usable as a Beam CombineGlobally fn."""
    total = collections.Counter()
    for counts in dicts:
        total.update(counts)
    return dict(total)


MAX_BUCKETS = 12  # compiled shapes per step function; more buckets, less padding


def suggest_bucket_boundaries(length_counts: Mapping[int, int], *, max_length: int,
                              max_buckets: int = MAX_BUCKETS) -> list:
    """Bucket upper bounds (inclusive) that minimise padding over the train lengths.

    A batch holds a fixed token budget, so the compute spent on a pair is its bucket's
    boundary: the boundaries minimise sum(count(length) * boundary(length)) with at most
    `max_buckets` buckets (dynamic programming over the candidate boundaries, which are
    the lengths rounded up by `features.boundary_granularity` and capped at max_length).
    `length_counts` maps max(len(inputs), len(targets)) to its number of pairs.
    """
    counts = collections.Counter()
    for length, count in length_counts.items():
        step = features.boundary_granularity(length)
        counts[min(max_length, -(-length // step) * step)] += count
    if not counts:
        return [min(8, max_length)]
    candidates = sorted(counts)
    prefix = [0]
    for boundary in candidates:
        prefix.append(prefix[-1] + counts[boundary])
    size = len(candidates)
    # cost[j], choice[k][j]: the cheapest cover of candidates[:j + 1] by k buckets whose
    # last boundary is candidates[j], and where the bucket before it ends.
    cost = [candidates[j] * prefix[j + 1] for j in range(size)]
    choices = [[-1] * size]
    for _ in range(1, min(max_buckets, size)):
        new_cost, choice = list(cost), [-1] * size
        for j in range(size):
            for i in range(j):
                value = cost[i] + candidates[j] * (prefix[j + 1] - prefix[i + 1])
                if value < new_cost[j]:
                    new_cost[j], choice[j] = value, i
        cost = new_cost
        choices.append(choice)
    boundaries, j = [], size - 1
    for level in range(len(choices) - 1, -1, -1):
        if j < 0:
            break
        if level and choices[level][j] == -1:
            continue  # fewer buckets were as cheap: the cover of the level below stands
        boundaries.append(candidates[j])
        j = choices[level][j]
    return sorted(boundaries)


def length_histogram(stats: Mapping, split: str, *, max_length: int) -> dict:
    """Counts of input and target lengths (with EOS) in buckets of HISTOGRAM_BUCKET_WIDTH."""
    width = HISTOGRAM_BUCKET_WIDTH
    bounds = [min(b, max_length) for b in range(width, max_length + width, width)]
    histogram = {"bucket_upper_bounds": bounds}
    for side, key in (("inputs", "len_inputs"), ("targets", "len_targets")):
        buckets = [0] * len(bounds)
        for stat_key, count in stats.items():
            if stat_key[0] == split and stat_key[1] == key:
                buckets[min(max(stat_key[2] - 1, 0) // width, len(bounds) - 1)] += count
        histogram[side] = buckets
    return histogram


def split_counts(stats: Mapping, split: str, *, num_shards: int) -> dict:
    """The splits.<split> block of metadata.json."""
    dropped = {reason: 0 for reason in CORE_REASONS}
    for key, count in stats.items():
        if key[0] == split and key[1] == DROPPED:
            dropped[key[2]] = dropped.get(key[2], 0) + count
    return {
        "read": stats.get((split, READ), 0),
        "written": stats.get((split, WRITTEN), 0),
        "dropped": dropped,
        "normalized_whitespace": stats.get((split, NORMALIZED), 0),
        "input_tokens": stats.get((split, "input_tokens"), 0),
        "target_tokens": stats.get((split, "target_tokens"), 0),
        "num_shards": num_shards,
        "files": shard_name(split, 0, num_shards).replace("00000-of", "?????-of"),
    }


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Everything metadata.json records that is known before the pipeline runs."""
    output_dir: str
    num_shards: Mapping[str, int]
    max_length: int
    max_length_ratio: float
    sources: Mapping[str, list]
    split_fractions: Optional[Mapping[str, float]] = None


def build_metadata(*, stats: Mapping, tokenizer: dict, settings: OutputSettings) -> dict:
    """metadata.json: the contract the trainer and evaluator read (see README)."""
    source_file, target_file = tokenizer_lib.model_file_names(tokenizer["shared"])
    sides, loaded = {}, {}
    for side, file_name, model in (("source", source_file, tokenizer["source_model"]),
                                   ("target", target_file, tokenizer["target_model"])):
        if model not in loaded:
            loaded[model] = tokenizer_lib.Tokenizer(model)
        sides[side] = {"path": file_name, "sha256": loaded[model].sha256,
                       "vocab_size": loaded[model].vocab_size}
    if tokenizer["shared"]:
        fingerprint = sides["source"]["sha256"]
    else:  # one value that changes when either model changes (checkpoints pin it)
        fingerprint = tokenizer_lib.sha256_of_bytes(
            f"{sides['source']['sha256']}:{sides['target']['sha256']}".encode("ascii"))
    splits = sorted(settings.num_shards, key=features.SPLITS.index)
    max_lengths = {key[2]: count for key, count in stats.items()
                   if key[0] == "train" and key[1] == "len_max"}
    return {
        "format_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "splits": {split: split_counts(stats, split, num_shards=settings.num_shards[split])
                   for split in splits},
        "tokenizer": {
            "path": sides["source"]["path"],
            "sha256": fingerprint,
            "model_type": tokenizer["model_type"],
            "shared": tokenizer["shared"],
            "trained": tokenizer["trained"],
            "requested_vocab_size": tokenizer["requested_vocab_size"],
            "sample_pairs": tokenizer["sample_pairs"],
            "given_paths": tokenizer["given_paths"],
            "source": sides["source"],
            "target": sides["target"],
        },
        "vocab_size": max(sides["source"]["vocab_size"], sides["target"]["vocab_size"]),
        "source_vocab_size": sides["source"]["vocab_size"],
        "target_vocab_size": sides["target"]["vocab_size"],
        "pad_id": features.PAD_ID,
        "eos_id": features.EOS_ID,
        "unk_id": features.UNK_ID,
        "bos_id": features.BOS_ID,
        "max_length": settings.max_length,
        "max_length_ratio": settings.max_length_ratio,
        "ratio_min_tokens": RATIO_MIN_TOKENS,
        "length_histogram": {split: length_histogram(stats, split,
                                                     max_length=settings.max_length)
                             for split in splits},
        "bucket_boundaries": suggest_bucket_boundaries(max_lengths,
                                                       max_length=settings.max_length),
        "num_shards": dict(settings.num_shards),
        "sources": {split: list(specs) for split, specs in settings.sources.items()},
        "split_fractions": dict(settings.split_fractions or {}) or None,
        "dead_letter": {"path": DEAD_LETTER_FILE,
                        "count": stats.get((DEAD_LETTER, WRITTEN), 0)},
    }


def write_outputs(_, *, stats: list, settings: OutputSettings,
                  tokenizer_settings: TokenizerSettings, tokenizer: Optional[dict] = None) -> dict:
    """Writes empty shards, the tokenizer model(s), metadata.json, then _COMPLETED (last).

    `stats` are WriteShards' outputs; `tokenizer` is the trained tokenizer side input (None
    means read the given model files). A shard that received no pairs is an empty file.
    """
    import tensorflow as tf
    stats = merge_counts(stats)
    for split, count in settings.num_shards.items():
        for shard in range(count):
            path = os.path.join(settings.output_dir, shard_name(split, shard, count))
            if not tf.io.gfile.exists(path):
                _write_atomically(path, b"")
    if tokenizer is None:
        tokenizer = load_given_tokenizer((tokenizer_settings.source_model_path,
                                          tokenizer_settings.target_model_path),
                                         settings=tokenizer_settings)
    directory = settings.output_dir
    source_file, target_file = tokenizer_lib.model_file_names(tokenizer["shared"])
    for file_name, model in ((source_file, tokenizer["source_model"]),
                             (target_file, tokenizer["target_model"])):
        _write_atomically(os.path.join(directory, file_name), model)
    metadata = build_metadata(stats=stats, tokenizer=tokenizer, settings=settings)
    _write_atomically(os.path.join(directory, features.METADATA_FILE),
                      metadata_json(metadata).encode("utf-8"))
    with tf.io.gfile.GFile(os.path.join(directory, features.COMPLETED_FILE), "w") as stream:
        stream.write(metadata["created_at"] + "\n")
    return metadata


def metadata_json(metadata: dict) -> str:
    """Indented JSON with lists of numbers on one line (histograms stay readable)."""
    text = json.dumps(metadata, indent=2, sort_keys=True)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)).strip() + "]",
                            text) + "\n"


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.]+,?\s*)+)\]")


def _write_atomically(path: str, data: bytes) -> None:
    import tensorflow as tf
    temp = _temp_name(path)
    with tf.io.gfile.GFile(temp, "wb") as stream:
        stream.write(data)
    tf.io.gfile.rename(temp, path, overwrite=True)
