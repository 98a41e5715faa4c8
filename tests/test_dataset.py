import collections
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import fault_injection
import toy_data
from pipeline import dataset, features


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


# ---- faults in the data dir: nothing lost, nothing silent --------------------------------

@pytest.fixture
def recorded_dir(tmp_path):
    """A small data dir whose metadata.json lists its shards (2 train, 1 dev, 1 test)."""
    toy_data.make_toy_data_dir(str(tmp_path), num_train=64, num_dev=16, num_test=8)
    fault_injection.record_shards(str(tmp_path))
    return str(tmp_path)


def shard(data_dir, split, index=0, count=None):
    count = count or (2 if split == "train" else 1)
    return os.path.join(data_dir, f"{split}-{index:05d}-of-{count:05d}.tfrecord")


def read_train(data_dir, **kwargs):
    """Every training batch of one pass, as the trainer reads them (errors explained)."""
    ds = dataset.make_train_dataset(data_dir=data_dir, split="train", boundaries=[8, 16],
                                    tokens_per_batch=64, shuffle_buffer=0, repeat=False,
                                    **kwargs)
    with dataset.explaining_read_errors(data_dir=data_dir, split="train",
                                        length_skips=kwargs.get("length_skips")):
        return list(ds)


def test_recorded_shards_are_verified_and_returned_in_order(recorded_dir):
    files = dataset.verified_shard_files(recorded_dir, "train", count_records=True)
    assert files == [shard(recorded_dir, "train", 0), shard(recorded_dir, "train", 1)]
    assert sum(b["inputs"].shape[0] for b in read_train(recorded_dir)) > 0


def test_a_deleted_shard_stops_training_and_scoring_naming_it(recorded_dir):
    os.remove(shard(recorded_dir, "train", 1))
    with pytest.raises(dataset.DataDirError,
                       match=r"train-00001-of-00002.tfrecord: shard missing .*1 \(train-00001"):
        read_train(recorded_dir)
    os.remove(shard(recorded_dir, "dev"))
    # The evaluator's split of the same dir fails the same way, before anything is decoded.
    with pytest.raises(dataset.DataDirError, match="dev-00000-of-00001.tfrecord: shard missing"):
        dataset.make_eval_dataset(data_dir=recorded_dir, split="dev", batch_size=4)


def test_a_stray_shard_from_another_run_is_refused_naming_it(recorded_dir):
    shutil.copy(shard(recorded_dir, "train", 0),
                os.path.join(recorded_dir, "train-00002-of-00003.tfrecord"))
    with pytest.raises(dataset.DataDirError,
                       match="train-00002-of-00003.tfrecord: not one of the 2 shards"):
        dataset.verified_shard_files(recorded_dir, "train")


def test_an_emptied_shard_stops_training(recorded_dir):
    open(shard(recorded_dir, "train", 0), "wb").close()
    with pytest.raises(dataset.DataDirError,
                       match=r"train-00000-of-00002.tfrecord: empty file, but metadata.json "
                             r"records 32 records"):
        read_train(recorded_dir)


def test_a_shard_cut_on_a_record_boundary_is_found_by_counting(recorded_dir):
    dev = shard(recorded_dir, "dev")
    fault_injection.truncate_to_records(dev, 10)
    assert len(dataset.verified_shard_files(recorded_dir, "dev")) == 1  # names alone pass
    with pytest.raises(dataset.DataDirError,
                       match="dev-00000-of-00001.tfrecord: 10 records, but metadata.json "
                             "records 16"):
        dataset.verified_shard_files(recorded_dir, "dev", count_records=True)


def test_a_shard_replaced_by_one_of_the_same_length_is_found_by_its_sha256(recorded_dir):
    dev = shard(recorded_dir, "dev")
    toy_data.write_split(recorded_dir, "dev", toy_data.make_pairs(16, seed=9))
    assert fault_injection.count_records(dev) == 16
    with pytest.raises(dataset.DataDirError,
                       match=r"dev-00000-of-00001.tfrecord: sha256 \w{12}\.\.\. differs from "
                             r"the \w{12}\.\.\. metadata.json records"):
        dataset.verified_shard_files(recorded_dir, "dev", count_records=True)
    # An older list without sha256 checks the count only.
    fault_injection.edit_metadata(
        recorded_dir, lambda m: m["splits"]["dev"]["shards"][0].pop("sha256"))
    assert dataset.verified_shard_files(recorded_dir, "dev", count_records=True) == [dev]


def test_metadata_without_a_shard_list_is_read_with_one_warning(tmp_path, caplog):
    toy_data.make_toy_data_dir(str(tmp_path), num_train=16, num_dev=2, num_test=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            files = dataset.verified_shard_files(str(tmp_path), "train", count_records=True)
    assert len(files) == 2
    warnings = [r for r in caplog.records if "cannot be detected" in r.getMessage()]
    assert len(warnings) == 1
    assert "lists no shards for split 'train'" in warnings[0].getMessage()


@pytest.mark.parametrize("entry", [{"file": "train-00000-of-00002.tfrecord"},
                                   {"file": 3, "records": 2}, "train-00000-of-00002.tfrecord"])
def test_a_malformed_shard_list_names_metadata_json(recorded_dir, entry):
    fault_injection.edit_metadata(
        recorded_dir, lambda m: m["splits"]["train"]["shards"].__setitem__(0, entry))
    with pytest.raises(dataset.DataDirError, match=r"metadata.json: splits.train.shards holds"):
        dataset.verified_shard_files(recorded_dir, "train")


def test_an_unknown_split_is_named(recorded_dir):
    with pytest.raises(dataset.DataDirError, match="has no split 'valid' .it has: dev, test, "
                                                   "train"):
        dataset.verified_shard_files(recorded_dir, "valid")


def test_a_corrupt_record_is_named_with_its_shard_and_index(recorded_dir):
    path = shard(recorded_dir, "train", 1)
    fault_injection.flip_byte(path, record=7)
    offset = fault_injection.record_offsets(path)[7] + fault_injection.HEADER_BYTES
    with pytest.raises(dataset.DataDirError) as error:
        read_train(recorded_dir)
    message = str(error.value)
    assert message.startswith(f"{path}: record 7 is unreadable (corrupted record at byte "
                              f"{offset})")
    assert "re-run s2s-preprocess for this data with --overwrite" in message
    assert "also damaged" not in message
    assert dataset.first_bad_record(shard(recorded_dir, "train", 0)) is None


def test_every_damaged_shard_is_listed_and_a_cut_record_is_truncated(recorded_dir):
    first, second = shard(recorded_dir, "train", 0), shard(recorded_dir, "train", 1)
    fault_injection.flip_byte(second, record=0)
    offsets = fault_injection.record_offsets(first)
    with open(first, "r+b") as f:
        f.truncate(offsets[5] + 20)  # in the middle of record 5
    assert dataset.first_bad_record(first) == (5, f"truncated record at byte {offsets[5]}")
    with pytest.raises(dataset.DataDirError,
                       match=r"train-00000-of-00002.tfrecord: record 5 is unreadable "
                             r"\(truncated record at byte \d+\); also damaged: "
                             r"train-00001-of-00002.tfrecord;"):
        read_train(recorded_dir)


def test_record_counting_names_a_corrupt_record(recorded_dir):
    fault_injection.flip_byte(shard(recorded_dir, "test"), record=3)
    with pytest.raises(dataset.DataDirError,
                       match=r"test-00000-of-00001.tfrecord: record 3 is unreadable"):
        dataset.verified_shard_files(recorded_dir, "test", count_records=True)


def test_first_bad_record_finds_a_record_past_the_first_scan_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "_SCAN_BATCH", 4)
    path = str(tmp_path / "records.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(11):
            writer.write(b"record %d" % i)
    fault_injection.flip_byte(path, record=9)
    assert dataset.first_bad_record(path)[0] == 9


def pair_lengths(data_dir, split):
    """max(len(inputs), len(targets)) of every pair of a split, read independently."""
    lengths = []
    for path in dataset.shard_files(data_dir, split):
        for record in tf.data.TFRecordDataset(path):
            example = features.parse_example(record)
            lengths.append(max(len(example["inputs"]), len(example["targets"])))
    return lengths


def with_histogram(data_dir, split="train"):
    """Adds metadata's per-side length histogram (8-token buckets up to 16), as preprocess
    writes it."""
    inputs, targets = [0, 0], [0, 0]
    for path in dataset.shard_files(data_dir, split):
        for record in tf.data.TFRecordDataset(path):
            example = features.parse_example(record)
            inputs[(len(example["inputs"]) - 1) // 8] += 1
            targets[(len(example["targets"]) - 1) // 8] += 1
    return fault_injection.edit_metadata(data_dir, lambda m: m.__setitem__(
        "length_histogram", {split: {"bucket_upper_bounds": [8, 16], "inputs": inputs,
                                     "targets": targets}}))


def test_skipped_by_length_is_exact_or_bounded_from_metadata(recorded_dir):
    metadata = with_histogram(recorded_dir)
    lengths = pair_lengths(recorded_dir, "train")
    longer_than_8 = sum(n > 8 for n in lengths)
    assert 0 < longer_than_8 < len(lengths)
    # Covers preprocess's max_length (16), or train's suggested boundaries: nothing skipped.
    assert dataset.skipped_by_length(metadata, split="train", longest=16) == (0, 0)
    assert dataset.skipped_by_length({**metadata, "max_length": 99}, split="train",
                                     longest=16) == (0, 0)
    # On a histogram bound: at least the longer side's count, at most both sides' sum.
    low, high = dataset.skipped_by_length(metadata, split="train", longest=8)
    assert low <= longer_than_8 <= high
    assert low == max(metadata["length_histogram"]["train"]["inputs"][1],
                      metadata["length_histogram"]["train"]["targets"][1])
    # Inside a histogram bucket only "some of those" is known; without a histogram, nothing.
    assert dataset.skipped_by_length(metadata, split="train", longest=12) == (0, min(
        64, sum(metadata["length_histogram"]["train"]["inputs"][1:])
        + sum(metadata["length_histogram"]["train"]["targets"][1:])))
    assert dataset.skipped_by_length(metadata, split="dev", longest=8) is None


def test_too_many_skips_known_from_metadata_refuse_to_start(recorded_dir):
    metadata = with_histogram(recorded_dir)
    with pytest.raises(dataset.DataDirError,
                       match=r"of the 64 pairs of split 'train' have a side longer than the "
                             r"largest bucket boundary \(8 tokens\) and would be skipped: "
                             r"more than max_dropped_fraction=0.01"):
        dataset.LengthSkips(metadata, split="train", longest=8, max_fraction=0.01)
    with pytest.raises(dataset.DataDirError, match=r"must be in \[0, 1\]"):
        dataset.LengthSkips(metadata, split="train", longest=8, max_fraction=1.5)


def test_skips_are_counted_exactly_and_logged_once(recorded_dir, caplog):
    metadata = with_histogram(recorded_dir)
    with caplog.at_level(logging.WARNING):
        skips = dataset.LengthSkips(metadata, split="train", longest=8, max_fraction=1.0)
    assert "have a side longer than the largest bucket boundary (8 tokens)" in caplog.text
    batches = dataset.make_train_dataset(data_dir=recorded_dir, split="train", boundaries=[8],
                                         tokens_per_batch=8, shuffle_buffer=0, repeat=False,
                                         length_skips=skips)
    kept = sum(int(b["inputs"].shape[0]) for b in batches)
    lengths = pair_lengths(recorded_dir, "train")
    assert (skips.read, skips.skipped) == (64, sum(n > 8 for n in lengths))
    assert kept == 64 - skips.skipped
    caplog.clear()
    with caplog.at_level(logging.WARNING), tf.summary.create_file_writer(
            os.path.join(recorded_dir, "events")).as_default():
        skips.report(1)
        skips.report(2)
    assert caplog.text.count("skipping pairs longer than 8 tokens") == 1


def test_too_many_skips_unknown_at_start_stop_the_reading(recorded_dir):
    metadata = dataset.load_metadata(recorded_dir)  # no histogram: only reading can tell
    skips = dataset.LengthSkips(metadata, split="train", longest=8, max_fraction=0.01)
    assert skips.check_while_reading
    ds = dataset.make_train_dataset(data_dir=recorded_dir, split="train", boundaries=[8],
                                    tokens_per_batch=64, shuffle_buffer=16,
                                    length_skips=skips)
    with pytest.raises(dataset.DataDirError,
                       match=r"of the first \d+ pairs read from split 'train' had a side "
                             r"longer than the largest bucket boundary \(8 tokens\) and were "
                             r"skipped: more than max_dropped_fraction=0.01"):
        with dataset.explaining_read_errors(data_dir=recorded_dir, split="train",
                                            length_skips=skips):
            for _ in ds.take(10_000):
                pass
    assert skips.read >= dataset.MIN_PAIRS_TO_JUDGE
    # Within the limit the same reading goes on, and a skip-free run is not checked at all.
    relaxed = dataset.LengthSkips(metadata, split="train", longest=8, max_fraction=0.9)
    list(dataset.make_train_dataset(data_dir=recorded_dir, split="train", boundaries=[8],
                                    tokens_per_batch=64, shuffle_buffer=16,
                                    length_skips=relaxed).take(1000))
    assert relaxed.read >= dataset.MIN_PAIRS_TO_JUDGE and relaxed.skipped > 0
    assert not dataset.LengthSkips(metadata, split="train", longest=16,
                                   max_fraction=0.0).check_while_reading


def test_iterator_with_skip_counts_restores_the_next_batch(recorded_dir, tmp_path):
    metadata = dataset.load_metadata(recorded_dir)

    def make():
        skips = dataset.LengthSkips(metadata, split="train", longest=12, max_fraction=1.0)
        return skips, iter(dataset.make_train_dataset(
            data_dir=recorded_dir, split="train", boundaries=[8, 12], tokens_per_batch=48,
            shuffle_buffer=32, seed=3, length_skips=skips))

    first_skips, iterator = make()
    for _ in range(5):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "ckpt"))
    expected = [next(iterator)["inputs"].numpy() for _ in range(3)]
    first_read = first_skips.read
    skips, restored = make()
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    for want in expected:
        np.testing.assert_array_equal(next(restored)["inputs"].numpy(), want)
    for _ in range(60):  # past the restored buffers: parsing again, into the new counter
        next(restored)
    assert skips.read > 0 and first_skips.read == first_read
