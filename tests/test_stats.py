"""Counts and metadata.json, without Beam: bucket boundaries, histograms, the splits block."""

import itertools
import os
import random
import subprocess
import sys

from pipeline import features
from pipeline import stats as stats_lib
from pipeline import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imports_without_beam():
    code = ("import sys; sys.modules['apache_beam'] = None\n"  # any Beam import now fails
            "from pipeline import stats\n"
            "print(stats.merge_counts([{('train', 'read'): 1}, {('train', 'read'): 2}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "{('train', 'read'): 3}"


def test_bucket_boundaries_minimise_padding():
    lengths = {3: 50, 9: 30, 17: 15, 40: 4, 300: 1}
    # Few distinct lengths: each gets its own bucket, rounded up (3 -> 4, 9 -> 10, 17 -> 20).
    assert stats_lib.suggest_bucket_boundaries(lengths, max_length=256) == [4, 10, 20, 40, 256]
    # Two buckets: sum(count * boundary) is 95*20 + 5*256 = 3180 when splitting at 20,
    # against 5920 at 10 and 4216 at 40.
    assert stats_lib.suggest_bucket_boundaries(lengths, max_length=256,
                                                max_buckets=2) == [20, 256]
    assert stats_lib.suggest_bucket_boundaries({}, max_length=64) == [8]
    assert stats_lib.suggest_bucket_boundaries({5: 10}, max_length=100) == [6]
    assert stats_lib.suggest_bucket_boundaries({99: 1}, max_length=100) == [100]
    assert [features.boundary_granularity(n) for n in (7, 16, 17, 32, 33)] == [2, 2, 4, 4, 8]


def test_bucket_boundaries_match_brute_force():
    rng = random.Random(7)
    lengths = {rng.randint(1, 60): rng.randint(1, 50) for _ in range(25)}

    def compute(boundaries):
        return sum(count * min(b for b in boundaries if b >= length)
                   for length, count in lengths.items())

    candidates = sorted({min(64, -(-n // features.boundary_granularity(n))
                             * features.boundary_granularity(n)) for n in lengths})
    for buckets in (1, 2, 3, 4):
        best = min(compute(list(c) + [candidates[-1]])
                   for k in range(buckets)
                   for c in itertools.combinations(candidates[:-1], k))
        got = stats_lib.suggest_bucket_boundaries(lengths, max_length=64, max_buckets=buckets)
        assert len(got) <= buckets and got[-1] == candidates[-1]
        assert compute(got) == best


def test_length_histogram_buckets_of_eight():
    stats = {("train", "len_inputs", 1): 2, ("train", "len_inputs", 8): 1,
             ("train", "len_inputs", 9): 4, ("train", "len_targets", 20): 1,
             ("dev", "len_inputs", 3): 7}
    histogram = stats_lib.length_histogram(stats, "train", max_length=20)
    assert histogram == {"bucket_upper_bounds": [8, 16, 20], "inputs": [3, 4, 0],
                         "targets": [0, 0, 1]}


def test_split_counts_lists_every_shard_with_its_records():
    stats = {("train", "read"): 7, ("train", "written"): 5,
             ("train", "dropped", "malformed"): 1, ("train", "dropped", "line_too_long"): 1}
    shards = [{"split": "train", "file": "train-00001-of-00002.tfrecord", "records": 0,
               "sha256": "e3b0"},
              {"split": "train", "file": "train-00000-of-00002.tfrecord", "records": 5,
               "sha256": "ab12"}]
    block = stats_lib.split_counts(stats, "train", num_shards=2, shards=shards)
    assert block["shards"] == [
        {"file": "train-00000-of-00002.tfrecord", "records": 5, "sha256": "ab12"},
        {"file": "train-00001-of-00002.tfrecord", "records": 0, "sha256": "e3b0"}]
    assert block["read"] == block["written"] + sum(block["dropped"].values())
    assert block["dropped"]["line_too_long"] == 1 and block["dropped"]["empty"] == 0


def test_build_metadata_puts_shards_under_their_split():
    model = tokenizer_lib.train_sentencepiece(["open the file", "Datei öffnen"] * 5,
                                              vocab_size=30)
    tokenizer = {"source_model": model, "target_model": model, "shared": True,
                 "trained": True, "model_type": "unigram", "requested_vocab_size": 30,
                 "sample_pairs": 5, "given_paths": None}
    settings = stats_lib.OutputSettings(output_dir="out", num_shards={"train": 1, "dev": 1},
                                        max_length=16, max_length_ratio=0,
                                        sources={"train": ["tsv:t.tsv"]})
    shards = [{"split": "dev", "file": "dev-00000-of-00001.tfrecord", "records": 2,
               "sha256": "d"},
              {"split": "train", "file": "train-00000-of-00001.tfrecord", "records": 3,
               "sha256": "t"}]
    metadata = stats_lib.build_metadata(stats={("train", "written"): 3, ("dev", "written"): 2},
                                        tokenizer=tokenizer, settings=settings, shards=shards)
    assert metadata["splits"]["train"]["shards"] == [
        {"file": "train-00000-of-00001.tfrecord", "records": 3, "sha256": "t"}]
    assert metadata["splits"]["dev"]["shards"] == [
        {"file": "dev-00000-of-00001.tfrecord", "records": 2, "sha256": "d"}]
    assert metadata["dead_letter"] == {"path": "dead_letter/dead_letter.jsonl", "count": 0}
