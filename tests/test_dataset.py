import collections
import os

import numpy as np
import pytest
import tensorflow as tf

import toy_data
from pipeline import dataset, features


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return toy_data.make_toy_data_dir(str(tmp_path_factory.mktemp("toy")))


def test_load_metadata_refuses_incomplete_dir(tmp_path):
    toy_data.make_toy_data_dir(str(tmp_path), num_train=8, num_dev=2, num_test=2)
    assert dataset.load_metadata(str(tmp_path))["vocab_size"] == 21
    os.remove(tmp_path / features.COMPLETED_FILE)
    with pytest.raises(dataset.DataDirError, match="_COMPLETED"):
        dataset.load_metadata(str(tmp_path))
    with pytest.raises(dataset.DataDirError, match="does not exist"):
        dataset.load_metadata(str(tmp_path / "missing"))


def test_bucket_batch_sizes_respect_budget_and_multiple():
    assert dataset.bucket_batch_sizes([8, 16, 64], tokens_per_batch=256) == [32, 16, 4]
    assert dataset.bucket_batch_sizes([8, 16, 100], tokens_per_batch=256, multiple=4) == [
        32, 16, 4]
    assert dataset.bucket_batch_sizes([200], tokens_per_batch=256, multiple=2) == [2]


def test_train_batches_have_static_bucket_shapes(data_dir):
    ds = dataset.make_train_dataset(data_dir=data_dir, split="train", boundaries=[8, 16],
                                    tokens_per_batch=128, shuffle_buffer=16, seed=1)
    shapes = set()
    for batch in ds.take(30):
        inputs, targets = batch["inputs"].numpy(), batch["targets"].numpy()
        assert inputs.shape == targets.shape
        shapes.add(inputs.shape)
        # Every row holds a real example ending in EOS, then padding.
        for row in inputs:
            real = row[row != features.PAD_ID]
            assert real[-1] == features.EOS_ID
    assert shapes <= {(16, 8), (8, 16)}
    assert len(shapes) == 2


def test_fine_boundaries_follow_the_granularity():
    assert dataset.fine_boundaries(40) == [2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40]
    assert dataset.fine_boundaries(7) == [2, 4, 6, 7]


@pytest.fixture(scope="module")
def unrelated_lengths_dir(tmp_path_factory):
    """Pairs whose source and target lengths vary independently (a source's bucket by its
    longer side says little about its shorter one)."""
    output = str(tmp_path_factory.mktemp("lengths"))
    toy_data.make_toy_data_dir(output, num_train=8, num_dev=2, num_test=2)
    sources = [s for s, _ in toy_data.make_pairs(512, seed=5)]
    targets = [t for _, t in toy_data.make_pairs(512, seed=6)]
    toy_data.write_split(output, "train", list(zip(sources, targets)))
    return output


@pytest.mark.parametrize("both", [False, True], ids=["longer_side", "both_lengths"])
def test_dynamic_batches_pad_each_side_to_its_own_longest(unrelated_lengths_dir, both):
    ds = dataset.make_train_dataset(data_dir=unrelated_lengths_dir, split="train",
                                    boundaries=[8, 16], tokens_per_batch=128,
                                    shuffle_buffer=16, seed=1, static_shapes=False,
                                    bucket_by_both_lengths=both)
    fine = dataset.fine_boundaries(16)

    def bucket(length):
        return min(b for b in fine if b >= length)

    widths, mixed_sources = set(), 0
    for batch in ds.take(30):
        lengths = []
        for key in ("inputs", "targets"):
            tokens = batch[key].numpy()
            lengths.append((tokens != features.PAD_ID).sum(axis=1))
            assert tokens.shape[1] == lengths[-1].max()  # no all-padding column
            widths.add(tokens.shape[1])
        source, target = lengths
        # One bucket by the longer side, whose token budget sets the batch size ...
        longer = {bucket(n) for n in np.maximum(source, target)}
        assert len(longer) == 1
        assert len(source) == 128 // longer.pop()
        # ... and by both lengths, one source bucket and one target bucket as well.
        sides = [{bucket(n) for n in side} for side in (source, target)]
        mixed_sources += len(sides[0]) > 1
        if both:
            assert all(len(side) == 1 for side in sides), sides
    assert len(widths) > 2  # more shapes than the two static buckets
    assert (mixed_sources == 0) == both  # the longer side alone leaves sources mixed


def test_input_pipelines_split_the_examples_without_overlap(data_dir):
    def ids(pipeline_id, num):
        ds = dataset.make_train_dataset(
            data_dir=data_dir, split="train", boundaries=[16], tokens_per_batch=16 * 8,
            shuffle_buffer=0, num_input_pipelines=num, input_pipeline_id=pipeline_id,
            repeat=False)
        return collections.Counter(
            tuple(row[row != 0]) for batch in ds for row in batch["inputs"].numpy())

    first, second, everything = ids(0, 2), ids(1, 2), ids(0, 1)
    assert sum(first.values()) == sum(second.values()) == 256
    assert first + second == everything


def test_iterator_checkpoint_restores_the_next_batch(data_dir, tmp_path):
    def make():
        return iter(dataset.make_train_dataset(
            data_dir=data_dir, split="train", boundaries=[8, 16], tokens_per_batch=128,
            shuffle_buffer=64, seed=3))

    iterator = make()
    for _ in range(5):
        next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.write(str(tmp_path / "ckpt"))
    expected = [next(iterator)["inputs"].numpy() for _ in range(3)]

    restored = make()
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    for want in expected:
        np.testing.assert_array_equal(next(restored)["inputs"].numpy(), want)


def test_eval_dataset_keeps_order_and_pads_to_a_boundary(data_dir):
    ds = dataset.make_eval_dataset(data_dir=data_dir, split="dev", batch_size=10,
                                   boundaries=[8, 16])
    batches = list(ds)
    assert sum(b["inputs"].shape[0] for b in batches) == 32
    assert all(b["inputs"].shape[1] in (8, 16) for b in batches)
    texts = [t.decode() for b in batches for t in b["targets_text"].numpy()]
    assert texts == [t for _, t in toy_data.make_pairs(32, seed=1)]
