"""The preprocess DoFns and helpers, run in TestPipeline with assert_that where they are Beam."""

import functools
import hashlib
import itertools
import os
import random

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import features, sources, transforms
from pipeline import tokenizer as tokenizer_lib

FIVE_FIVE = transforms.SplitFractions(dev=0.05, test=0.05)


@functools.lru_cache(maxsize=None)
def tiny_model() -> bytes:
    """A near character-level model: token counts of the test texts are easy to foresee."""
    corpus = ["the quick brown fox jumps over the lazy dog", "open the file", "Datei öffnen",
              "save the file", "Datei speichern", "Grüße aus Köln"] * 4
    return tokenizer_lib.train_sentencepiece(corpus, vocab_size=60)


def local_pipeline():
    """FnApiRunner: the local batch engine preprocess uses (no Prism download attempt)."""
    return BeamTestPipeline(runner="FnApiRunner")


def counter(result, name):
    query = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))
    return sum(c.committed for c in query["counters"])


# --------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize("source, expected", [
    ("m", "test"),       # sha256 % 100 == 2
    ("k", "dev"),        # sha256 % 100 == 6
    ("hello", "train"),  # sha256 % 100 == 20
    ("  Hello ", "train"),  # stripped and lowercased first
    ("M", "test"),
])
def test_split_by_sha256_mod_100_on_known_strings(source, expected):
    assert transforms.split_of(source, FIVE_FIVE) == expected


def test_integer_percents_mean_exactly_mod_100():
    for index in range(2000):
        text = f"message number {index}"
        h = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100
        expected = "test" if h < 5 else "dev" if h < 10 else "train"
        assert transforms.split_of(text, FIVE_FIVE) == expected


def test_fractional_percents_use_the_next_four_digits():
    # "k": h % 100 == 6 and (h // 100) % 10000 == 4309, so u = 6.4309
    assert transforms.split_of("k", transforms.SplitFractions(dev=0.065)) == "dev"
    assert transforms.split_of("k", transforms.SplitFractions(dev=0.064)) == "train"


# --------------------------------------------------------------------------------------------
# Cleaning


RAW = [
    ("train", "f.tsv", 1, b"Open file", b"Datei \xc3\xb6ffnen", ""),
    ("train", "f.tsv", 2, b"bad \xff byte", b"x", ""),
    ("train", "f.tsv", 3, b"   ", b"leer", ""),
    ("train", "f.tsv", 4, b"bell\x07", b"Glocke", ""),
    ("train", "f.tsv", 5, b"tab\there\r", b"line\xe2\x80\xa8sep", ""),
    ("train", "f.tsv", 6, b"no tab", None, "malformed"),
    ("train", "f.mo", 7, b"", b"header", "gettext_header"),
    ("dev", "d.tsv", 1, "Save", "Speichern", ""),
]


def test_clean_pairs_routes_every_record():
    with local_pipeline() as pipeline:
        outputs = (pipeline
                   | beam.Create([transforms.pack(RAW)])
                   | beam.ParDo(transforms.CleanPairs(fractions=None, emit_eval_keys=True))
                   .with_outputs("stats", transforms.DEAD_LETTER, "eval_keys", main="pairs"))
        pairs = outputs.pairs | "Pairs" >> beam.FlatMap(
            lambda batch: [(p[0], p[1], p[2], p[3]) for p in batch])
        assert_that(pairs, equal_to([
            ("train", "Open file", "Datei öffnen", features.fingerprint("Open file",
                                                                       "Datei öffnen")),
            ("train", "tab here", "line sep", features.fingerprint("tab here", "line sep")),
            ("dev", "Save", "Speichern", features.fingerprint("Save", "Speichern")),
        ]), label="pairs")
        dead = outputs[transforms.DEAD_LETTER] | "Dead" >> beam.FlatMap(
            lambda keyed: [(row[0], row[1], row[3], row[4]) for row in keyed[1]])
        assert_that(dead, equal_to([
            ("f.tsv", 2, "invalid_utf8", repr(b"bad \xff byte")),
            ("f.tsv", 4, "control_chars", repr(b"bell\x07")),
            ("f.tsv", 6, "malformed", repr(b"no tab")),
        ]), label="dead")
        stats = outputs.stats | beam.Values() | "Sum" >> beam.CombineGlobally(
            transforms.merge_counts)
        assert_that(stats, equal_to([{
            ("train", "read"): 7, ("dev", "read"): 1, ("train", "normalized"): 1,
            ("train", "dropped", "invalid_utf8"): 1, ("train", "dropped", "empty"): 1,
            ("train", "dropped", "control_chars"): 1, ("train", "dropped", "malformed"): 1,
            ("train", "dropped", "gettext_header"): 1}]), label="stats")
        keys = outputs.eval_keys | "Keys" >> beam.FlatMap(lambda keys: keys)
        assert_that(keys, equal_to([transforms.source_digest("Save")[:16]]), label="keys")


def test_clean_pairs_carves_splits_and_counts_them_where_they_land():
    raw = [("train", "f", i, word, "x", "") for i, word in enumerate(["m", "k", "hello"], 1)]
    with local_pipeline() as pipeline:
        outputs = (pipeline
                   | beam.Create([transforms.pack(raw)])
                   | beam.ParDo(transforms.CleanPairs(fractions=FIVE_FIVE, emit_eval_keys=False))
                   .with_outputs("stats", main="pairs"))
        splits = outputs.pairs | beam.FlatMap(lambda batch: [(p[0], p[1]) for p in batch])
        assert_that(splits, equal_to([("test", "m"), ("dev", "k"), ("train", "hello")]))
        stats = outputs.stats | beam.Values() | "Sum" >> beam.CombineGlobally(
            transforms.merge_counts)
        assert_that(stats, equal_to([{("test", "read"): 1, ("dev", "read"): 1,
                                      ("train", "read"): 1}]), label="stats")


def test_alternate_pronunciations_are_references_in_dev_and_test_but_skipped_in_train():
    raw = [("train", "d", i, word, phones, problem) for i, (word, phones, problem) in enumerate([
        ("m", "EH M", ""), ("m", "EH M Z", "cmudict_alternate"),          # -> test
        ("hello", "HH AH L OW", ""), ("hello", "HH EH L OW", "cmudict_alternate"),  # -> train
    ], 1)] + [("dev", "d", 5, "k", "K EY", "cmudict_alternate")]  # an explicit dev source
    with local_pipeline() as pipeline:
        outputs = (pipeline
                   | beam.Create([transforms.pack(raw)])
                   | beam.ParDo(transforms.CleanPairs(fractions=FIVE_FIVE, emit_eval_keys=False))
                   .with_outputs("stats", main="pairs"))
        kept = outputs.pairs | beam.FlatMap(lambda batch: [(p[0], p[1], p[2]) for p in batch])
        assert_that(kept, equal_to([("test", "m", "EH M"), ("test", "m", "EH M Z"),
                                    ("train", "hello", "HH AH L OW"), ("dev", "k", "K EY")]))
        stats = outputs.stats | beam.Values() | "Sum" >> beam.CombineGlobally(
            transforms.merge_counts)
        assert_that(stats, equal_to([{("test", "read"): 2, ("train", "read"): 2,
                                      ("dev", "read"): 1,
                                      ("train", "dropped", "cmudict_alternate"): 1}]),
                    label="stats")


def test_clean_counts_reach_beam_metrics():
    pipeline = local_pipeline()
    _ = (pipeline
         | beam.Create([transforms.pack(RAW)])
         | beam.ParDo(transforms.CleanPairs(fractions=None, emit_eval_keys=False)))
    result = pipeline.run()
    result.wait_until_finish()
    assert counter(result, "train/read") == 7
    assert counter(result, "train/dropped/invalid_utf8") == 1
    assert counter(result, "train/dropped/control_chars") == 1


# --------------------------------------------------------------------------------------------
# Tokenizing and the token filters


def _clean(split, source, target):
    return (split, source, target, features.fingerprint(source, target),
            transforms.source_digest(source)[:16])


def test_tokenize_filters_and_keys_by_shard():
    model = tiny_model()
    processor = tokenizer_lib.Tokenizer(model)
    long_text = " ".join(["the quick brown fox"] * 10)
    batch = [
        _clean("train", "open the file", "Datei öffnen"),    # kept
        _clean("train", long_text, "Hund"),                   # too long for max_length=40
        _clean("train", "the file", "the file the file the file"),  # 4 vs 12 tokens: ratio 3
        _clean("train", "Save", "Speichern"),                # overlaps dev
        _clean("dev", "Save", "Speichern"),                  # dev keeps it
    ]
    settings = transforms.TokenizerSettings(vocab_size=100)
    info = transforms.tokenizer_info(source_model=model, target_model=model, settings=settings)
    num_shards = {"train": 3, "dev": 1}
    with local_pipeline() as pipeline:
        eval_keys = pipeline | "EvalKeys" >> beam.Create([[transforms.source_digest("Save")[:16]]])
        outputs = (pipeline
                   | "Batch" >> beam.Create([batch])
                   | beam.ParDo(transforms.TokenizePairs(
                       max_length=40, max_length_ratio=2.0, num_shards=num_shards,
                       tokenizer_settings=settings),
                       tokenizer=beam.pvalue.AsSingleton(pipeline | "Info" >> beam.Create([info])),
                       eval_keys=beam.pvalue.AsList(eval_keys))
                   .with_outputs("stats", main="examples"))
        examples = outputs.examples | beam.FlatMap(
            lambda keyed: [(keyed[0], features.decode_example(item[1])) for item in
                           transforms.unpack(keyed[1])])
        decoded = examples | beam.Map(lambda kv: (kv[0], kv[1]["inputs"], kv[1]["targets"],
                                                  kv[1]["inputs_text"]))

        def expected(split, source, target):
            pair_id = features.fingerprint(source, target)
            shard = int(pair_id[:8], 16) % num_shards[split]
            return ((split, shard), processor.encode(source), processor.encode(target), source)

        assert_that(decoded, equal_to([expected("train", "open the file", "Datei öffnen"),
                                       expected("dev", "Save", "Speichern")]))
        stats = outputs.stats | beam.Values() | beam.CombineGlobally(transforms.merge_counts)
        assert_that(stats, equal_to([{("train", "dropped", "too_long"): 1,
                                      ("train", "dropped", "length_ratio"): 1,
                                      ("train", "dropped", "overlaps_eval"): 1}]),
                    label="stats")


def test_ratio_filter_ignores_pairs_with_a_very_short_side():
    model = tiny_model()
    settings = transforms.TokenizerSettings(vocab_size=100)
    info = transforms.tokenizer_info(source_model=model, target_model=model, settings=settings)
    dofn = transforms.TokenizePairs(max_length=256, max_length_ratio=2.0,
                                    num_shards={"train": 1}, tokenizer_settings=settings)
    short_source = _clean("train", "x", "Datei öffnen")  # 2 vs 11 tokens
    outputs = list(dofn.process([short_source], info))
    assert len(outputs) == 2 and outputs[0][0] == ("train", 0)  # kept: shorter side < 3 tokens


# --------------------------------------------------------------------------------------------
# Writing


def test_write_shards_sorts_dedups_and_leaves_no_temp_files(tmp_path):
    def item(source):
        pair_id = features.fingerprint(source, "t")
        example = features.fast_encode_example(inputs=[5, 1], targets=[6, 7, 1],
                                               pair_id=pair_id, inputs_text=source,
                                               targets_text="t")
        return pair_id, example, 2, 3

    groups = [transforms.pack([item("b"), item("a")]), transforms.pack([item("a")]),
              transforms.pack([])]
    dofn = transforms.WriteShards(output_dir=str(tmp_path), num_shards={"train": 2})
    (stats,) = list(dofn.process((("train", 1), groups)))
    assert stats[("train", "written")] == 2
    assert stats[("train", "dropped", "duplicate")] == 1
    assert stats[("train", "len_max", 3)] == 2
    assert os.listdir(tmp_path) == ["train-00001-of-00002.tfrecord"]
    ids = [features.decode_example(record)["id"] for record in
           tf.data.TFRecordDataset(str(tmp_path / "train-00001-of-00002.tfrecord"))
           .as_numpy_iterator()]
    assert ids == sorted(features.fingerprint(s, "t") for s in "ab")


def test_write_shards_sums_the_stats_group():
    dofn = transforms.WriteShards(output_dir="unused", num_shards={})
    groups = [{("train", "read"): 2}, {("train", "read"): 3, ("dev", "read"): 1}]
    assert list(dofn.process(((transforms.STATS, 0), groups))) == [
        {("train", "read"): 5, ("dev", "read"): 1}]


def test_dead_letters_are_written_sorted_as_json_lines(tmp_path):
    rows = [("b.tsv", 3, "train", "malformed", "b'x'", None, ""),
            ("a.tsv", 9, "train", "invalid_utf8", "b'\\xff'", "b'y'", "bad byte")]
    dofn = transforms.WriteShards(output_dir=str(tmp_path), num_shards={})
    (stats,) = list(dofn.process(((transforms.DEAD_LETTER, 0), [rows])))
    assert stats == {(transforms.DEAD_LETTER, "written"): 2}
    lines = (tmp_path / transforms.DEAD_LETTER_FILE).read_text().splitlines()
    assert lines[0].startswith('{"source_file": "a.tsv", "line": 9, "split": "train", '
                               '"reason": "invalid_utf8"')


# --------------------------------------------------------------------------------------------
# Sampling and metadata helpers


def test_keep_smallest_is_bounded_and_order_independent():
    items = [(f"{i:04x}", f"s{i}", f"t{i}") for i in range(500)]
    combine = transforms.KeepSmallest(10)
    forward = combine.extract_output(combine.merge_accumulators(
        [combine.add_input(combine.create_accumulator(), items[i:i + 50])
         for i in range(0, 500, 50)]))
    backward = combine.extract_output(combine.add_input(
        combine.create_accumulator(), list(reversed(items)) + items[:5]))
    assert forward == backward == sorted(items)[:10]


def test_bucket_boundaries_minimise_padding():
    lengths = {3: 50, 9: 30, 17: 15, 40: 4, 300: 1}
    # Few distinct lengths: each gets its own bucket, rounded up (3 -> 4, 9 -> 10, 17 -> 20).
    assert transforms.suggest_bucket_boundaries(lengths, max_length=256) == [4, 10, 20, 40, 256]
    # Two buckets: sum(count * boundary) is 95*20 + 5*256 = 3180 when splitting at 20,
    # against 5920 at 10 and 4216 at 40.
    assert transforms.suggest_bucket_boundaries(lengths, max_length=256,
                                                max_buckets=2) == [20, 256]
    assert transforms.suggest_bucket_boundaries({}, max_length=64) == [8]
    assert transforms.suggest_bucket_boundaries({5: 10}, max_length=100) == [6]
    assert transforms.suggest_bucket_boundaries({99: 1}, max_length=100) == [100]
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
        got = transforms.suggest_bucket_boundaries(lengths, max_length=64, max_buckets=buckets)
        assert len(got) <= buckets and got[-1] == candidates[-1]
        assert compute(got) == best


def test_length_histogram_buckets_of_eight():
    stats = {("train", "len_inputs", 1): 2, ("train", "len_inputs", 8): 1,
             ("train", "len_inputs", 9): 4, ("train", "len_targets", 20): 1,
             ("dev", "len_inputs", 3): 7}
    histogram = transforms.length_histogram(stats, "train", max_length=20)
    assert histogram == {"bucket_upper_bounds": [8, 16, 20], "inputs": [3, 4, 0],
                         "targets": [0, 0, 1]}


def test_reader_batches_are_packed_plain_tuples(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"a\tb\nc\td\ne\tf\n")
    batches = list(transforms.ReadBatches(2).process(sources.TsvFile("train", str(path))))
    unpacked = [transforms.unpack(batch) for batch in batches]
    assert [len(batch) for batch in unpacked] == [2, 1]
    assert type(unpacked[0][0]) is tuple
