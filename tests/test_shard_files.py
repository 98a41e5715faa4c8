"""Shard and dead-letter files: TFRecord framing and sha256, sorting through disk, joining."""

import glob
import hashlib
import json
import os
import random
import tempfile

import pytest
import tensorflow as tf

from pipeline import external_sort, features, shard_files
from pipeline import stats as stats_lib


def test_tfrecords_match_tensorflows_writer_and_report_their_sha256(tmp_path):
    rng = random.Random(3)
    records = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
               for _ in range(200)]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    count, sha256 = shard_files.write_tfrecords(str(tmp_path / "ours.tfrecord"), records)
    ours = (tmp_path / "ours.tfrecord").read_bytes()
    assert ours == (tmp_path / "tf.tfrecord").read_bytes()
    assert (count, sha256) == (200, hashlib.sha256(ours).hexdigest())
    assert list(tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord"))
                .as_numpy_iterator()) == records


class _RunCounter:
    """Counts the runs external_sort spills to disk, and where it put them."""

    def __init__(self, monkeypatch):
        self.runs, self.directories = 0, set()
        write_run = external_sort._Spill.write_run

        def counting(spill, items, size_bytes):
            write_run(spill, items, size_bytes)
            self.runs += 1
            self.directories.add(spill.directory)

        monkeypatch.setattr(external_sort._Spill, "write_run", counting)


def test_sorting_through_disk_gives_the_in_memory_order_and_cleans_up(monkeypatch):
    rng = random.Random(5)
    items = [(f"{rng.randrange(10**6):06d}", rng.randrange(9)) for _ in range(5000)]
    batches = [(items[i:i + 100], 1000) for i in range(0, len(items), 100)]
    monkeypatch.setattr(external_sort, "ITEM_OVERHEAD_BYTES", 0)  # budget = packed bytes
    spills = _RunCounter(monkeypatch)
    with external_sort.sorted_items(iter(batches), key=lambda item: item[0],
                                    budget_bytes=4000) as result:
        merged = list(result)
    assert [item[0] for item in merged] == sorted(item[0] for item in items)
    assert sorted(merged) == sorted(items)
    assert spills.runs == 12  # 50 batches of 1000 "bytes", a run every 4: 12 runs + memory
    assert not any(os.path.exists(directory) for directory in spills.directories)


def test_input_within_budget_never_touches_disk(monkeypatch):
    spills = _RunCounter(monkeypatch)
    with external_sort.sorted_items([([3, 1], 10), ([2], 10)], key=int,
                                    budget_bytes=10_000) as result:
        assert list(result) == [1, 2, 3]
    assert spills.runs == 0


def test_many_small_items_count_their_memory_not_just_their_packed_bytes(monkeypatch):
    spills = _RunCounter(monkeypatch)
    budget = 100 * external_sort.ITEM_OVERHEAD_BYTES
    with external_sort.sorted_items([(list(range(i, i + 50)), 1) for i in range(0, 500, 50)],
                                    key=int, budget_bytes=budget) as result:
        assert list(result) == list(range(500))
    assert spills.runs == 5  # 10 batches of 50 items: a run every 2 batches


def test_spill_files_are_removed_when_writing_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def batches():
        yield [5, 4], 10
        yield [3, 2], 10
        raise OSError("shuffle read failed")

    with pytest.raises(OSError, match="shuffle read failed"):
        with external_sort.sorted_items(batches(), key=int, budget_bytes=10) as result:
            list(result)
    assert os.listdir(tmp_path) == []


def _items(count, seed):
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        source = f"text {rng.randrange(count // 2)}"  # about one pair in three is repeated
        pair_id = features.fingerprint(source, "t")
        items.append((pair_id, features.fast_encode_example(
            inputs=[5, 1], targets=[6, 1], pair_id=pair_id, inputs_text=source,
            targets_text="t"), 2, 2, None))
    return items


def test_a_shard_sorted_through_disk_has_the_same_bytes_and_counts(tmp_path, monkeypatch):
    items = _items(3000, seed=7)
    batches = [(items[i:i + 50], 50 * 150) for i in range(0, len(items), 50)]
    in_memory = shard_files.write_shard(str(tmp_path / "a.tfrecord"), split="train",
                                        batches=iter(batches))
    spills = _RunCounter(monkeypatch)
    spilled = shard_files.write_shard(str(tmp_path / "b.tfrecord"), split="train",
                                      batches=iter(batches), sort_buffer_bytes=20_000)
    assert spills.runs > 10
    assert (tmp_path / "a.tfrecord").read_bytes() == (tmp_path / "b.tfrecord").read_bytes()
    assert spilled == in_memory
    counts, sha256 = spilled
    unique = len({item[0] for item in items})
    assert counts[("train", stats_lib.WRITTEN)] == unique
    assert counts[("train", stats_lib.DROPPED, stats_lib.DUPLICATE)] == len(items) - unique
    assert sha256 == hashlib.sha256((tmp_path / "a.tfrecord").read_bytes()).hexdigest()
    assert sorted(os.listdir(tmp_path)) == ["a.tfrecord", "b.tfrecord"]  # no temp files


def _dead_row(origin, number, reason="malformed"):
    return (origin, number, "train", reason, repr(b"line %d" % number), None, "")


def test_dead_letter_pieces_join_in_file_and_line_order(tmp_path):
    output_dir = str(tmp_path)
    first, count = shard_files.write_dead_letter_piece(
        output_dir, batches=[([_dead_row("b", 7), _dead_row("b", 2)], 100)])
    assert count == 2 and os.path.basename(first).startswith(".dead_letter.jsonl.tmp-")
    second, _ = shard_files.write_dead_letter_piece(
        output_dir, batches=[([_dead_row("a", 4)], 50), ([_dead_row("a", 1)], 50)],
        sort_buffer_bytes=50)  # sorted through disk
    stats = shard_files.join_dead_letter_pieces([("b", 0, first, 2), ("a", 0, second, 2)],
                                                output_dir=output_dir)
    assert stats == {(stats_lib.DEAD_LETTER, stats_lib.WRITTEN): 4}
    path = tmp_path / stats_lib.DEAD_LETTER_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(row["source_file"], row["line"]) for row in rows] == [
        ("a", 1), ("a", 4), ("b", 2), ("b", 7)]
    assert rows[0] == {"source_file": "a", "line": 1, "split": "train", "reason": "malformed",
                       "source": repr(b"line 1"), "target": None, "detail": ""}
    assert os.listdir(path.parent) == ["dead_letter.jsonl"]
    # A retried join (the pieces are gone) reports the same count and keeps the file.
    again = shard_files.join_dead_letter_pieces([("b", 0, first, 2), ("a", 0, second, 2)],
                                                output_dir=output_dir)
    assert again == stats and len(path.read_text().splitlines()) == 4


def test_temp_names_are_the_pattern_preprocess_cleans_up(tmp_path):
    temp = shard_files.temp_name(str(tmp_path / "train-00000-of-00001.tfrecord"))
    name = os.path.basename(temp)
    assert name.startswith(".train-00000-of-00001.tfrecord.tmp-")
    assert len(name.rsplit("-", 1)[1]) == 32 and not glob.glob(temp)
