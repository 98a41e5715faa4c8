"""The preprocess stages: their DoFns run in TestPipeline with assert_that, the named
PTransforms chained on a tiny corpus."""

import functools
import hashlib
import json
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import batches, cleaning, features, sources, tokenizing, transforms
from pipeline import stats as stats_lib
from pipeline import tokenizer as tokenizer_lib

FIVE_FIVE = cleaning.SplitFractions(dev=0.05, test=0.05)


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
    assert cleaning.split_of(source, FIVE_FIVE) == expected


def test_integer_percents_mean_exactly_mod_100():
    for index in range(2000):
        text = f"message number {index}"
        h = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100
        expected = "test" if h < 5 else "dev" if h < 10 else "train"
        assert cleaning.split_of(text, FIVE_FIVE) == expected


def test_fractional_percents_use_the_next_four_digits():
    # "k": h % 100 == 6 and (h // 100) % 10000 == 4309, so u = 6.4309
    assert cleaning.split_of("k", cleaning.SplitFractions(dev=0.065)) == "dev"
    assert cleaning.split_of("k", cleaning.SplitFractions(dev=0.064)) == "train"


# --------------------------------------------------------------------------------------------
# Cleaning


RAW = [tuple(sources.RawPair(*fields)) for fields in [
    ("train", "f.tsv", 1, b"Open file", b"Datei \xc3\xb6ffnen", ""),
    ("train", "f.tsv", 2, b"bad \xff byte", b"x", ""),
    ("train", "f.tsv", 3, b"   ", b"leer", ""),
    ("train", "f.tsv", 4, b"bell\x07", b"Glocke", ""),
    ("train", "f.tsv", 5, b"tab\there\r", b"line\xe2\x80\xa8sep", ""),
    ("train", "f.tsv", 6, b"no tab", None, "malformed"),
    ("train", "f.mo", 7, b"", b"header", "gettext_header"),
    ("dev", "d.tsv", 1, "Save", "Speichern", ""),
]]


def clean_outputs(pipeline, raw, **settings):
    """CleanPairs on one packed batch; returns its tagged outputs."""
    return (pipeline
            | beam.Create([batches.pack(raw)])
            | beam.ParDo(cleaning.CleanPairs(**settings)).with_outputs(
                cleaning.STATS, cleaning.DEAD_LETTERS, cleaning.EVAL_KEYS, main=cleaning.PAIRS))


def summed(stats):
    return stats | "Sum" >> beam.CombineGlobally(stats_lib.merge_counts)


def test_clean_pairs_routes_every_record():
    with local_pipeline() as pipeline:
        outputs = clean_outputs(pipeline, RAW, fractions=None, emit_eval_keys=True)
        pairs = outputs.pairs | "Pairs" >> beam.FlatMap(
            lambda batch: [(p[0], p[1], p[2], p[3], p[5]) for p in batch])
        assert_that(pairs, equal_to([  # a dev pair keeps its origin; train pairs need none
            ("train", "Open file", "Datei öffnen", features.fingerprint("Open file",
                                                                       "Datei öffnen"), None),
            ("train", "tab here", "line sep", features.fingerprint("tab here", "line sep"),
             None),
            ("dev", "Save", "Speichern", features.fingerprint("Save", "Speichern"),
             ("d.tsv", 1)),
        ]), label="pairs")
        dead = outputs[cleaning.DEAD_LETTERS] | "Dead" >> beam.FlatMap(
            lambda keyed: [(keyed[0], row[0], row[1], row[3], row[4])
                           for row in batches.unpack(keyed[1])])
        assert_that(dead, equal_to([
            (("f.tsv", 0), "f.tsv", 2, "invalid_utf8", repr(b"bad \xff byte")),
            (("f.tsv", 0), "f.tsv", 4, "control_chars", repr(b"bell\x07")),
            (("f.tsv", 0), "f.tsv", 6, "malformed", repr(b"no tab")),
        ]), label="dead")
        assert_that(summed(outputs.stats), equal_to([{
            ("train", "read"): 7, ("dev", "read"): 1, ("train", "normalized"): 1,
            ("train", "dropped", "invalid_utf8"): 1, ("train", "dropped", "empty"): 1,
            ("train", "dropped", "control_chars"): 1, ("train", "dropped", "malformed"): 1,
            ("train", "dropped", "gettext_header"): 1,
            ("dev", "origin_records", "d.tsv"): 1}]), label="stats")
        keys = outputs.eval_keys | "Keys" >> beam.FlatMap(lambda keys: keys)
        assert_that(keys, equal_to([cleaning.source_digest("Save")[:16]]), label="keys")


def test_dead_letters_are_keyed_by_file_and_line_range_and_cut_to_a_bounded_size():
    lines = cleaning.DEAD_LETTER_RANGE_LINES
    long_text = b"x" * (cleaning.DEAD_LETTER_TEXT_BYTES + 500)
    raw = [tuple(sources.RawPair(*fields)) for fields in [
        ("train", "a.tsv", lines - 1, b"no tab", None, "malformed"),
        ("train", "a.tsv", lines, long_text, None, "malformed"),
        ("train", "b.tsv", 3, b"prefix", None, "line_too_long", "line of 9999999 bytes"),
    ]]
    outputs = list(cleaning.CleanPairs(fractions=None, emit_eval_keys=False).process(
        batches.pack(raw)))
    dead = {output.value[0]: batches.unpack(output.value[1]) for output in outputs
            if getattr(output, "tag", None) == cleaning.DEAD_LETTERS}
    assert sorted(dead) == [("a.tsv", 0), ("a.tsv", 1), ("b.tsv", 0)]
    (cut,) = dead[("a.tsv", 1)]
    assert cut[4] == repr(long_text[:cleaning.DEAD_LETTER_TEXT_BYTES])
    assert cut[6] == f"source cut to its first {cleaning.DEAD_LETTER_TEXT_BYTES} of " \
                     f"{len(long_text)}"
    (overlong,) = dead[("b.tsv", 0)]
    assert overlong[3:] == ("line_too_long", repr(b"prefix"), None, "line of 9999999 bytes")
    (stats,) = [output.value for output in outputs
                if getattr(output, "tag", None) == cleaning.STATS]
    assert stats == {("train", "read"): 3, ("train", "dropped", "malformed"): 2,
                     ("train", "dropped", "line_too_long"): 1}


def test_clean_pairs_carves_splits_and_counts_them_where_they_land():
    raw = [("train", "f", i, word, "x", "", "") for i, word in enumerate(["m", "k", "hello"], 1)]
    with local_pipeline() as pipeline:
        outputs = clean_outputs(pipeline, raw, fractions=FIVE_FIVE, emit_eval_keys=False)
        splits = outputs.pairs | beam.FlatMap(lambda batch: [(p[0], p[1]) for p in batch])
        assert_that(splits, equal_to([("test", "m"), ("dev", "k"), ("train", "hello")]))
        assert_that(summed(outputs.stats), equal_to([{("test", "read"): 1, ("dev", "read"): 1,
                                                      ("train", "read"): 1}]), label="stats")


def test_alternate_pronunciations_are_references_in_dev_and_test_but_skipped_in_train():
    raw = [("train", "d", i, word, phones, problem, "")
           for i, (word, phones, problem) in enumerate([
               ("m", "EH M", ""), ("m", "EH M Z", "cmudict_alternate"),          # -> test
               ("hello", "HH AH L OW", ""), ("hello", "HH EH L OW", "cmudict_alternate"),
           ], 1)] + [("dev", "d", 5, "k", "K EY", "cmudict_alternate", "")]  # explicit dev
    with local_pipeline() as pipeline:
        outputs = clean_outputs(pipeline, raw, fractions=FIVE_FIVE, emit_eval_keys=False)
        kept = outputs.pairs | beam.FlatMap(lambda batch: [(p[0], p[1], p[2]) for p in batch])
        assert_that(kept, equal_to([("test", "m", "EH M"), ("test", "m", "EH M Z"),
                                    ("train", "hello", "HH AH L OW"), ("dev", "k", "K EY")]))
        assert_that(summed(outputs.stats), equal_to([{
            ("test", "read"): 2, ("train", "read"): 2, ("dev", "read"): 1,
            ("train", "dropped", "cmudict_alternate"): 1, ("dev", "origin_records", "d"): 1}]),
            label="stats")


def test_clean_counts_reach_beam_metrics():
    pipeline = local_pipeline()
    _ = (pipeline
         | beam.Create([batches.pack(RAW)])
         | beam.ParDo(cleaning.CleanPairs(fractions=None, emit_eval_keys=False)))
    result = pipeline.run()
    result.wait_until_finish()
    assert counter(result, "train/read") == 7
    assert counter(result, "train/dropped/invalid_utf8") == 1
    assert counter(result, "train/dropped/control_chars") == 1


# --------------------------------------------------------------------------------------------
# Tokenizing and the token filters


def _clean(split, source, target):
    return (split, source, target, features.fingerprint(source, target),
            cleaning.source_digest(source)[:16], None if split == "train" else ("f", 1))


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
    settings = tokenizing.TokenizerSettings(vocab_size=100)
    info = tokenizing.tokenizer_info(source_model=model, target_model=model, settings=settings)
    num_shards = {"train": 3, "dev": 1}
    with local_pipeline() as pipeline:
        eval_keys = pipeline | "EvalKeys" >> beam.Create([[cleaning.source_digest("Save")[:16]]])
        outputs = (pipeline
                   | "Batch" >> beam.Create([batch])
                   | transforms.TokenizeExamples(
                       max_length=40, max_length_ratio=2.0, num_shards=num_shards,
                       tokenizer_settings=settings,
                       tokenizer=pipeline | "Info" >> beam.Create([info]), eval_keys=eval_keys))
        examples = outputs["examples"] | beam.FlatMap(
            lambda keyed: [(keyed[0], features.decode_example(item[1])) for item in
                           batches.unpack(keyed[1])])
        decoded = examples | beam.Map(lambda kv: (kv[0], kv[1]["inputs"], kv[1]["targets"],
                                                  kv[1]["inputs_text"]))

        def expected(split, source, target):
            pair_id = features.fingerprint(source, target)
            shard = int(pair_id[:8], 16) % num_shards[split]
            return ((split, shard), processor.encode(source), processor.encode(target), source)

        assert_that(decoded, equal_to([expected("train", "open the file", "Datei öffnen"),
                                       expected("dev", "Save", "Speichern")]))
        assert_that(summed(outputs["stats"]), equal_to([{
            ("train", "dropped", "too_long"): 1, ("train", "dropped", "length_ratio"): 1,
            ("train", "dropped", "overlaps_eval"): 1}]), label="stats")


def test_ratio_filter_ignores_pairs_with_a_very_short_side():
    model = tiny_model()
    settings = tokenizing.TokenizerSettings(vocab_size=100)
    info = tokenizing.tokenizer_info(source_model=model, target_model=model, settings=settings)
    dofn = tokenizing.TokenizePairs(max_length=256, max_length_ratio=2.0,
                                    num_shards={"train": 1}, tokenizer_settings=settings)
    short_source = _clean("train", "x", "Datei öffnen")  # 2 vs 11 tokens
    outputs = list(dofn.process([short_source], info))
    assert len(outputs) == 2 and outputs[0][0] == ("train", 0)  # kept: shorter side < 3 tokens


# --------------------------------------------------------------------------------------------
# Writing


def _item(source):
    pair_id = features.fingerprint(source, "t")
    example = features.fast_encode_example(inputs=[5, 1], targets=[6, 7, 1], pair_id=pair_id,
                                           inputs_text=source, targets_text="t")
    return pair_id, example, 2, 3, None


def test_write_shard_file_sorts_dedups_records_the_shard_and_leaves_no_temp_files(tmp_path):
    groups = [batches.pack([_item("b"), _item("a")]), batches.pack([_item("a")]),
              batches.pack([])]
    dofn = transforms.WriteShardFile(output_dir=str(tmp_path), num_shards={"train": 2})
    stats, shard = list(dofn.process((("train", 1), groups)))
    assert stats[("train", "written")] == 2
    assert stats[("train", "dropped", "duplicate")] == 1
    assert stats[("train", "len_max", 3)] == 2
    assert os.listdir(tmp_path) == ["train-00001-of-00002.tfrecord"]
    path = tmp_path / "train-00001-of-00002.tfrecord"
    assert shard.tag == transforms.SHARDS and shard.value == {
        "split": "train", "shard": 1, "file": "train-00001-of-00002.tfrecord", "records": 2,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    ids = [features.decode_example(record)["id"] for record in
           tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    assert ids == sorted(features.fingerprint(s, "t") for s in "ab")


def test_write_dead_letters_spreads_keys_and_joins_pieces_in_line_order(tmp_path):
    def row(origin, number):
        return (origin, number, "train", "malformed", repr(b"x%d" % number), None, "")

    keyed = [(("b.tsv", 0), batches.pack([row("b.tsv", 5), row("b.tsv", 2)])),
             (("a.tsv", 1), batches.pack([row("a.tsv", 1_500_000)])),
             (("a.tsv", 0), batches.pack([row("a.tsv", 9)])),
             (("a.tsv", 0), batches.pack([row("a.tsv", 3)]))]
    with local_pipeline() as pipeline:
        stats = (pipeline
                 | beam.Create(keyed)
                 | transforms.WriteDeadLetters(output_dir=str(tmp_path)))
        assert_that(stats, equal_to([{(stats_lib.DEAD_LETTER, "written"): 5}]))
    rows = [json.loads(line) for line in (tmp_path / stats_lib.DEAD_LETTER_FILE).open()]
    assert [(r["source_file"], r["line"]) for r in rows] == [
        ("a.tsv", 3), ("a.tsv", 9), ("a.tsv", 1_500_000), ("b.tsv", 2), ("b.tsv", 5)]
    assert os.listdir(tmp_path / stats_lib.DEAD_LETTER) == ["dead_letter.jsonl"]  # no pieces


def test_no_dead_letters_no_file(tmp_path):
    with local_pipeline() as pipeline:
        stats = (pipeline
                 | beam.Create([]).with_output_types(beam.typehints.KV[tuple, bytes])
                 | transforms.WriteDeadLetters(output_dir=str(tmp_path)))
        assert_that(stats, equal_to([{}]))
    assert not os.listdir(tmp_path)


def test_sum_stats_adds_every_stage():
    with local_pipeline() as pipeline:
        first = pipeline | "First" >> beam.Create([{("train", "read"): 2},
                                                   {("train", "read"): 3, ("dev", "read"): 1}])
        second = pipeline | "Second" >> beam.Create([{("train", "written"): 4}])
        total = (first, second) | transforms.SumStats()
        assert_that(total, equal_to([{("train", "read"): 5, ("dev", "read"): 1,
                                      ("train", "written"): 4}]))


# --------------------------------------------------------------------------------------------
# Sampling and reading


def test_keep_smallest_is_bounded_and_order_independent():
    items = [(f"{i:04x}", f"s{i}", f"t{i}") for i in range(500)]
    combine = tokenizing.KeepSmallest(10)
    forward = combine.extract_output(combine.merge_accumulators(
        [combine.add_input(combine.create_accumulator(), items[i:i + 50])
         for i in range(0, 500, 50)]))
    backward = combine.extract_output(combine.add_input(
        combine.create_accumulator(), list(reversed(items)) + items[:5]))
    assert forward == backward == sorted(items)[:10]


def test_reader_batches_are_packed_plain_tuples(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"a\tb\nc\td\ne\tf\n")
    packed = list(transforms.ReadBatches(2).process(sources.TsvFile("train", str(path))))
    unpacked = [batches.unpack(batch) for batch in packed]
    assert [len(batch) for batch in unpacked] == [2, 1]
    assert type(unpacked[0][0]) is tuple


def test_reader_batches_also_end_at_a_byte_budget(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"".join(b"%04d\t%s\n" % (i, b"y" * 96) for i in range(10)))
    packed = list(transforms.ReadBatches(1000, batch_bytes=300).process(
        sources.TsvFile("train", str(path))))
    sizes = [len(batches.unpack(batch)) for batch in packed]
    assert sizes == [3, 3, 3, 1]  # 100 bytes of text a record: the 3rd reaches 300
