"""tf.data input for the trainer and evaluator, read from preprocess output.

Never imports Beam, so training workers install without it. Training batches have a small,
fixed set of static shapes (one per bucket boundary, drop_remainder) so the step compiles
once per bucket under XLA, and the host-level iterator is checkpointable for exact resume.
"""

import json
import os

import tensorflow as tf

from pipeline import features


class DataDirError(ValueError):
    """The data directory is missing, incomplete or inconsistent."""


def load_metadata(data_dir: str) -> dict:
    """Reads metadata.json, refusing a directory whose preprocess run did not complete."""
    if not tf.io.gfile.isdir(data_dir):
        raise DataDirError(f"data_dir {data_dir} does not exist")
    if not tf.io.gfile.exists(os.path.join(data_dir, features.COMPLETED_FILE)):
        raise DataDirError(
            f"{data_dir} has no {features.COMPLETED_FILE} marker: s2s-preprocess did not finish "
            "there (interrupted or still running); rerun it with --overwrite")
    path = os.path.join(data_dir, features.METADATA_FILE)
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.load(f)
    except (tf.errors.NotFoundError, json.JSONDecodeError) as error:
        raise DataDirError(f"{path}: unreadable metadata ({error})") from error


def shard_files(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of one split; sorted so every worker sees the same order."""
    files = sorted(tf.io.gfile.glob(os.path.join(data_dir, features.shard_pattern(split))))
    if not files:
        raise DataDirError(f"{data_dir} has no shards for split '{split}'")
    return files


def bucket_batch_sizes(boundaries, *, tokens_per_batch: int, multiple: int = 1) -> list[int]:
    """Examples per batch for each bucket: the token budget over the bucket length.

    Rounded down to a multiple of `multiple` (the replicas fed from one host) and at least
    `multiple`, so every batch splits evenly across replicas.
    """
    sizes = []
    for boundary in boundaries:
        size = (tokens_per_batch // boundary) // multiple * multiple
        sizes.append(max(size, multiple))
    return sizes


def fine_boundaries(largest: int) -> list[int]:
    """Every rounded length (see `features.boundary_granularity`) up to `largest`.

    The buckets to use when shapes need not be static (no XLA): a batch is then padded
    to its own longest source and target, and narrow buckets keep that close to every
    pair's length.
    """
    boundaries, length = [], 0
    while length < largest:
        length = min(largest, length + features.boundary_granularity(length + 1))
        boundaries.append(length)
    return boundaries


def _read_records(files: list[str], *, num_input_pipelines: int, input_pipeline_id: int):
    """This input pipeline's share of the records: whole files when there are enough."""
    if num_input_pipelines > 1 and len(files) >= num_input_pipelines:
        files = files[input_pipeline_id::num_input_pipelines]
        return tf.data.TFRecordDataset(files), False
    return tf.data.TFRecordDataset(files), num_input_pipelines > 1


_PARSE_BATCH = 256  # records parsed per vectorised parse (order is kept)


def make_train_dataset(*, data_dir: str, split: str, boundaries, tokens_per_batch: int,
                       batch_multiple: int = 1, shuffle_buffer: int = 8192, seed: int = 0,
                       num_input_pipelines: int = 1, input_pipeline_id: int = 0,
                       repeat: bool = True, static_shapes: bool = True,
                       bucket_by_both_lengths: bool = False) -> tf.data.Dataset:
    """Shuffled, bucketed, padded batches of {"inputs", "targets"}: [batch, length] int32.

    With static_shapes (XLA, TPU), inputs and targets of one batch are padded to the same
    bucket boundary, so the step compiles once per boundary. Without, the buckets are
    `fine_boundaries` up to the largest boundary and each side is padded to the batch's
    own longest sequence: less padding, the same token budget per batch;
    bucket_by_both_lengths then also groups by each side's own bucket (`_Buckets`).
    Pairs longer than the largest boundary are skipped (preprocess's --max_length
    normally prevents any).
    """
    boundaries = sorted(int(b) for b in boundaries)
    if not boundaries:
        raise DataDirError("no bucket boundaries: set --config.data.bucket_boundaries")
    if not static_shapes:
        boundaries = fine_boundaries(boundaries[-1])
    records, shard_examples = _read_records(
        shard_files(data_dir, split), num_input_pipelines=num_input_pipelines,
        input_pipeline_id=input_pipeline_id)
    if shard_examples:
        records = records.shard(num_input_pipelines, input_pipeline_id)
    if repeat:
        records = records.repeat()
    if shuffle_buffer > 1:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    sizes = bucket_batch_sizes(boundaries, tokens_per_batch=tokens_per_batch,
                               multiple=batch_multiple)
    buckets = _Buckets(boundaries, sizes,
                       by_both_lengths=bucket_by_both_lengths and not static_shapes)
    # One vectorised parse, length filter and bucket choice per _PARSE_BATCH records
    # (order kept): per-record work is most of an input pipeline's cost on a CPU.
    examples = records.batch(_PARSE_BATCH).map(
        buckets.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    batches = examples.group_by_window(
        key_func=lambda example: example[_BUCKET], window_size_func=buckets.batch_size,
        reduce_func=lambda key, window: window.padded_batch(buckets.batch_size(key),
                                                            drop_remainder=True))
    pad = buckets.pad_to_boundary if static_shapes else buckets.trim_to_longest
    return batches.map(pad).prefetch(2)


_BUCKET = "bucket"


class _Buckets:
    """Which bucket a pair joins, its batch size, and the width its batch is padded to.

    A bucket per boundary, by the pair's longer side, or with `by_both_lengths` a bucket
    per (source, target) pair of boundaries: bucketing by the longer side alone pads the
    shorter one (on English->German 18% of source positions were padding, 8% of target
    ones; 6% each by both). The batch size follows the longer side's boundary either
    way, so the token budget holds.
    """

    def __init__(self, boundaries, sizes, *, by_both_lengths: bool):
        self.boundaries = tf.constant(boundaries, tf.int64)
        self.sizes = tf.constant(sizes, tf.int64)
        self.count = len(boundaries)
        self.by_both_lengths = by_both_lengths

    def _index(self, lengths):
        return tf.searchsorted(self.boundaries, lengths, out_type=tf.int64)  # first >= length

    def parse(self, serialized):
        pairs = features.parse_token_batch(serialized)
        source = tf.cast(pairs[features.INPUTS].row_lengths(), tf.int64)
        target = tf.cast(pairs[features.TARGETS].row_lengths(), tf.int64)
        longer = tf.maximum(source, target)
        fits = longer <= self.boundaries[-1]
        if self.by_both_lengths:
            bucket = self._index(source) * self.count + self._index(target)
        else:
            bucket = self._index(longer)
        batch = {key: tf.boolean_mask(value.to_tensor(), fits) for key, value in pairs.items()}
        batch[_BUCKET] = tf.boolean_mask(bucket, fits)
        return batch

    def _longer_side(self, bucket):
        if self.by_both_lengths:
            return tf.maximum(bucket // self.count, bucket % self.count)
        return bucket

    def batch_size(self, bucket):
        return tf.gather(self.sizes, self._longer_side(bucket))

    def pad_to_boundary(self, batch):
        width = tf.cast(tf.gather(self.boundaries, batch[_BUCKET][0]), tf.int32)

        def fit(tokens):
            tokens = tokens[:, :width]
            return tf.pad(tokens, [[0, 0], [0, width - tf.shape(tokens)[1]]])

        return {key: fit(batch[key]) for key in (features.INPUTS, features.TARGETS)}

    def trim_to_longest(self, batch):
        def trim(tokens):
            real = tf.reduce_sum(tf.cast(tokens != features.PAD_ID, tf.int32), axis=1)
            return tokens[:, :tf.reduce_max(real)]

        return {key: trim(batch[key]) for key in (features.INPUTS, features.TARGETS)}


def make_eval_dataset(*, data_dir: str, split: str, batch_size: int,
                      boundaries=()) -> tf.data.Dataset:
    """All examples of a split in file order with ids and texts, for decoding and scoring.

    Sources are padded to the smallest boundary that fits the batch (or to the batch max
    when no boundaries are given), so decoding compiles for a few shapes only.
    """
    records = tf.data.TFRecordDataset(shard_files(data_dir, split))
    examples = records.map(features.parse_example)
    batches = examples.padded_batch(batch_size)
    boundaries = sorted(int(b) for b in boundaries)
    if not boundaries:
        return batches

    def pad_to_boundary(batch):
        length = tf.shape(batch[features.INPUTS])[1]
        fits = tf.constant(boundaries) >= length
        target = tf.where(tf.reduce_any(fits),
                          tf.reduce_min(tf.where(fits, boundaries, boundaries[-1])), length)
        batch[features.INPUTS] = tf.pad(batch[features.INPUTS],
                                        [[0, 0], [0, target - length]])
        return batch

    return batches.map(pad_to_boundary)
