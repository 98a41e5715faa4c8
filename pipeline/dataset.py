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


def _length(example) -> tf.Tensor:
    return tf.maximum(tf.size(example[features.INPUTS]), tf.size(example[features.TARGETS]))


def make_train_dataset(*, data_dir: str, split: str, boundaries, tokens_per_batch: int,
                       batch_multiple: int = 1, shuffle_buffer: int = 8192, seed: int = 0,
                       num_input_pipelines: int = 1, input_pipeline_id: int = 0,
                       repeat: bool = True, static_shapes: bool = True) -> tf.data.Dataset:
    """Shuffled, bucketed, padded batches of {"inputs", "targets"}: [batch, length] int32.

    With static_shapes (XLA, TPU), inputs and targets of one batch are padded to the same
    bucket boundary, so the step compiles once per boundary. Without, the buckets are
    `fine_boundaries` up to the largest boundary and each side is padded to the batch's
    own longest sequence: less padding, the same token budget per batch. Pairs longer
    than the largest boundary are skipped (preprocess's --max_length normally prevents any).
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

    def keep_tokens(serialized):
        example = features.parse_example(serialized)
        return {features.INPUTS: example[features.INPUTS],
                features.TARGETS: example[features.TARGETS]}

    examples = records.map(keep_tokens, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True)
    examples = examples.filter(lambda ex: _length(ex) <= boundaries[-1])
    sizes = bucket_batch_sizes(boundaries, tokens_per_batch=tokens_per_batch,
                               multiple=batch_multiple)
    batches = examples.bucket_by_sequence_length(
        element_length_func=_length,
        # Lengths < b+1 (i.e. <= b) land in the bucket padded to b - 1 + 1 = b.
        bucket_boundaries=[b + 1 for b in boundaries],
        bucket_batch_sizes=sizes + [sizes[-1]],
        pad_to_bucket_boundary=static_shapes,
        drop_remainder=True)
    return batches.prefetch(2)


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
