"""End to end: s2s-preprocess on tiny corpora, read back with tf.data; every bad-input class;
determinism across worker counts; output-dir safety; the CLI and Beam option passthrough."""

import glob
import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

import apache_beam as beam
import pytest
import tensorflow as tf
from absl import flags
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions,
                                                  SetupOptions, StandardOptions)

from pipeline import dataset, features, preprocess, progress, sources, transforms
from pipeline import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = ["file", "folder", "window", "message", "printer", "network", "account", "server"]
ACTIONS = [("open", "öffnen"), ("close", "schließen"), ("delete", "löschen"),
           ("rename", "umbenennen"), ("copy", "kopieren")]
GERMAN = {"file": "Datei", "folder": "Ordner", "window": "Fenster", "message": "Nachricht",
          "printer": "Drucker", "network": "Netzwerk", "account": "Konto", "server": "Server"}


def good_pairs():
    """40 clean, varied, roughly equal-length pairs."""
    return [(f"{verb} the {item} now", f"{GERMAN[item]} jetzt {german}")
            for verb, german in ACTIONS for item in ITEMS]


def tsv(pairs) -> bytes:
    return b"".join(s.encode() + b"\t" + t.encode() + b"\n" for s, t in pairs)


MO_ENTRIES = [(b"", b"Content-Type: text/plain; charset=UTF-8\n"),  # header: skipped
              (b"Open file", "Datei öffnen".encode()), (b"menu\x04Quit", b"Beenden"),
              (b"%d file\x00%d files", b"%d Datei\x00%d Dateien"),  # plural: skipped
              (b"Untranslated", b"")]  # untranslated: skipped


def write_mo(path, entries):
    """A little-endian GNU .mo catalog (tests/test_sources.py covers the format in depth)."""
    count, strings, tables = len(entries), b"", []
    offset = 28 + 16 * count
    for index in (0, 1):
        for entry in sorted(entries):
            tables.append(struct.pack("<2I", len(entry[index]), offset + len(strings)))
            strings += entry[index] + b"\x00"
    header = struct.pack("<7I", 0x950412DE, 0, count, 28, 28 + 8 * count, 0, 0)
    path.write_bytes(header + b"".join(tables) + strings)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """One small tokenizer shared by the tests that pass --tokenizer_model."""
    texts = [text for pair in good_pairs() for text in pair]
    path = tmp_path_factory.mktemp("tokenizer") / "tiny.model"
    path.write_bytes(tokenizer_lib.train_sentencepiece(texts, vocab_size=120))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train.tsv with one example of every bad-input class, plus dev/test and a .mo catalog."""
    root = tmp_path_factory.mktemp("corpus")
    good = good_pairs()
    train = bytearray(tsv(good[:30]))              # lines 1-30
    train += b"bad \xff\xfe bytes\tkaputt\n"       # 31 invalid_utf8
    train += b"   \tnur Ziel\n"                    # 32 empty
    train += b"ring the bell\x07\tKlingel\n"       # 33 control_chars
    train += ("word " * 300).encode() + b"\tWort\n"  # 34 too_long (max_length=64)
    train += b"zq xv kw\t" + ("lange Zeile " * 8).encode() + b"\n"  # 35 length_ratio (3.0)
    train += tsv(good[:1])                         # 36 duplicate of line 1
    train += b"Save The Document\tDokument sichern\n"  # 37 overlaps dev (case-insensitive)
    train += b"no tab on this line\n"              # 38 malformed
    train += b"tab\tinside\tthree fields\n"        # 39 malformed
    train += b"carriage\rreturn\tWagen\xc2\x85R\xc3\xbccklauf\r\n"  # 40 normalized, kept
    (root / "train.tsv").write_bytes(bytes(train))
    # The last dev line is longer than max_length: dev and test are never length-filtered.
    (root / "dev.tsv").write_bytes(tsv(good[30:35] + [("save the document ", "Speichern")])
                                   + ("term " * 300).encode() + b"\tBegriff\n")
    (root / "test.tsv").write_bytes(tsv(good[35:40]))
    write_mo(root / "app.mo", MO_ENTRIES)
    return root


def run_job(output_dir, *, beam_args=(), **job):
    options = preprocess.pipeline_options_from_argv(list(beam_args))
    return preprocess.preprocess(pipeline_options=options, output_dir=str(output_dir), **job)


def read_split(output_dir, split):
    files = sorted(glob.glob(os.path.join(output_dir, features.shard_pattern(split))))
    dataset = tf.data.TFRecordDataset(files).map(features.parse_example)
    return [{key: value.numpy() for key, value in example.items()} for example in dataset]


def shard_bytes(output_dir):
    return {os.path.basename(path): open(path, "rb").read() for path in
            sorted(glob.glob(os.path.join(output_dir, "*.tfrecord")))}


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("out")
    metadata = run_job(
        output_dir, train=[f"tsv:{corpus}/train.tsv", f"gettext:{corpus}/app.mo"],
        dev=[f"tsv:{corpus}/dev.tsv"], test=[f"tsv:{corpus}/test.tsv"], vocab_size=120,
        max_length=64, max_length_ratio=3.0, num_shards=2)
    return str(output_dir), metadata


def test_every_bad_input_class_is_counted(full_run):
    _, metadata = full_run
    train = metadata["splits"]["train"]
    assert train["read"] == 40 + len(MO_ENTRIES)
    assert train["dropped"] == {
        "invalid_utf8": 1, "empty": 1, "control_chars": 1, "too_long": 1, "length_ratio": 1,
        "duplicate": 1, "overlaps_eval": 1, "malformed": 2, "gettext_header": 1,
        "gettext_plural": 1, "gettext_untranslated": 1}
    assert train["written"] == 30 + 1 + 2  # good lines, the normalized line, two .mo entries
    assert train["normalized_whitespace"] == 1
    for split, counts in metadata["splits"].items():
        assert counts["read"] == counts["written"] + sum(counts["dropped"].values()), split
    assert metadata["splits"]["dev"]["written"] == 7
    assert not any(metadata["splits"]["dev"]["dropped"].values())
    assert metadata["splits"]["test"]["written"] == 5


def test_dev_and_test_examples_keep_their_file_and_line(full_run, corpus):
    output_dir, metadata = full_run
    for split, lines in (("dev", 7), ("test", 5)):
        assert metadata["splits"][split]["origins"] == [
            {"file": f"{corpus}/{split}.tsv", "records": lines}]
        examples = read_split(output_dir, split)
        where = sorted((e[features.ORIGIN].decode(), int(e[features.LINE])) for e in examples)
        assert where == [(f"{corpus}/{split}.tsv", line) for line in range(1, lines + 1)]
        raw = open(f"{corpus}/{split}.tsv", encoding="utf-8").read().splitlines()
        for example in examples:  # the example of line N holds line N's text
            source = raw[int(example[features.LINE]) - 1].split("\t")[0].strip()
            assert example[features.INPUTS_TEXT].decode() == source
    assert all(not e[features.ORIGIN] and not e[features.LINE]
               for e in read_split(output_dir, "train"))
    assert "origins" not in metadata["splits"]["train"]


def test_a_pair_repeated_on_two_test_lines_is_kept_for_each_and_dropped_lines_counted(
        tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    good = good_pairs()
    (root / "train.tsv").write_bytes(tsv(good[:20]))
    (root / "test.tsv").write_bytes(tsv(good[30:32]) + b"\n" + tsv(good[30:31]))
    metadata = run_job(tmp_path / "out", train=[f"tsv:{root}/train.tsv"],
                       test=[f"tsv:{root}/test.tsv"], vocab_size=120)
    test = metadata["splits"]["test"]
    assert test["origins"] == [{"file": f"{root}/test.tsv", "records": 4}]
    assert (test["written"], test["dropped"]["duplicate"], test["dropped"]["empty"]) == (3, 0, 1)
    lines = sorted(int(e[features.LINE]) for e in read_split(str(tmp_path / "out"), "test"))
    assert lines == [1, 2, 4]


def test_carved_splits_keep_file_and_line_without_listing_train_inputs(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    good = good_pairs()
    (root / "a.tsv").write_bytes(tsv(good[:20]))
    (root / "b.tsv").write_bytes(tsv(good[20:]))
    metadata = run_job(tmp_path / "out", train=[f"tsv:{root}/a.tsv", f"tsv:{root}/b.tsv"],
                       split_fractions={"dev": 0.2}, vocab_size=120)
    assert metadata["splits"]["dev"]["origins"] == []  # ordered by file, then line
    dev = read_split(str(tmp_path / "out"), "dev")
    raw = {f"{root}/a.tsv": good[:20], f"{root}/b.tsv": good[20:]}
    assert dev and all(
        raw[e[features.ORIGIN].decode()][e[features.LINE] - 1][0]
        == e[features.INPUTS_TEXT].decode() for e in dev)


def test_progress_lines_count_pairs_through_each_stage(corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)  # a line at every step
    with caplog.at_level(logging.INFO):
        metadata = run_job(tmp_path / "out", train=[f"tsv:{corpus}/train.tsv"],
                           dev=[f"tsv:{corpus}/dev.tsv"], vocab_size=120, max_length=64)
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("preprocess: read ")]
    totals = {}
    for line in lines:
        for stage in progress.STAGES:
            totals[stage] = max(totals.get(stage, 0),
                                int(re.search(rf"\b{stage} (\d+)", line).group(1)))
    splits = metadata["splits"].values()
    assert totals["read"] == sum(split["read"] for split in splits) == 47
    assert totals["written"] == sum(split["written"] for split in splits)
    assert totals["read"] > totals["cleaned"] >= totals["tokenized"] > totals["written"]
    assert any(re.search(r"now tokenized \(\d+ pairs/s\)$", line) for line in lines)


def test_dead_letters_name_file_line_and_raw_bytes(full_run, corpus):
    output_dir, metadata = full_run
    path = os.path.join(output_dir, "dead_letter", "dead_letter.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert metadata["dead_letter"]["count"] == len(rows) == 4
    by_line = {row["line"]: row for row in rows}
    assert {line: row["reason"] for line, row in by_line.items()} == {
        31: "invalid_utf8", 33: "control_chars", 38: "malformed", 39: "malformed"}
    assert by_line[31]["source_file"] == f"{corpus}/train.tsv"
    assert by_line[31]["source"] == repr(b"bad \xff\xfe bytes")
    assert by_line[31]["target"] == repr(b"kaputt")
    assert by_line[38]["source"] == repr(b"no tab on this line") and by_line[38]["target"] is None


def test_examples_read_back_with_tf_data_match_the_tokenizer(full_run):
    output_dir, metadata = full_run
    model = os.path.join(output_dir, metadata["tokenizer"]["path"])
    ours = tokenizer_lib.Tokenizer.from_file(model)
    in_graph = tokenizer_lib.tf_text_tokenizer(open(model, "rb").read())
    examples = read_split(output_dir, "train")
    assert len(examples) == metadata["splits"]["train"]["written"]
    texts = set()
    for example in examples:
        source = example[features.INPUTS_TEXT].decode()
        target = example[features.TARGETS_TEXT].decode()
        texts.add((source, target))
        assert example[features.INPUTS].tolist() == ours.encode(source)
        assert example[features.TARGETS].tolist() == ours.encode(target)
        assert example[features.INPUTS][:-1].tolist() == in_graph.tokenize(source).numpy().tolist()
        assert example[features.ID].decode() == features.fingerprint(source, target)
        assert len(example[features.INPUTS]) <= metadata["max_length"]
    assert ("carriage return", "Wagen Rücklauf") in texts
    assert ("Quit", "Beenden") in texts  # context stripped from the .mo entry
    assert not any(source.lower().strip() == "save the document" for source, _ in texts)


def test_metadata_contract(full_run, corpus):
    output_dir, metadata = full_run
    tokenizer = metadata["tokenizer"]
    model_path = os.path.join(output_dir, tokenizer["path"])
    assert tokenizer["path"] == "spm.model" and tokenizer["shared"] is True
    assert tokenizer["sha256"] == tokenizer_lib.sha256_of_file(model_path)
    assert tokenizer["model_type"] == "unigram" and tokenizer["trained"] is True
    assert metadata["vocab_size"] == tokenizer_lib.Tokenizer.from_file(model_path).vocab_size
    assert (metadata["pad_id"], metadata["eos_id"], metadata["unk_id"], metadata["bos_id"]) == (
        0, 1, 2, 3)
    assert metadata["max_length"] == 64
    assert metadata["num_shards"] == {"train": 2, "dev": 2, "test": 2}
    assert metadata["sources"] == {
        "train": [f"tsv:{corpus}/train.tsv", f"gettext:{corpus}/app.mo"],
        "dev": [f"tsv:{corpus}/dev.tsv"], "test": [f"tsv:{corpus}/test.tsv"]}
    boundaries = metadata["bucket_boundaries"]
    assert boundaries == sorted(boundaries) and boundaries[-1] <= 64
    assert all(b % features.boundary_granularity(b) == 0 for b in boundaries[:-1])
    for split in ("train", "dev", "test"):
        histogram = metadata["length_histogram"][split]
        assert sum(histogram["inputs"]) == metadata["splits"][split]["written"]
        assert sum(histogram["targets"]) == metadata["splits"][split]["written"]
    assert sorted(os.listdir(output_dir)) == sorted(
        ["_COMPLETED", "metadata.json", "spm.model", "dead_letter"]
        + [f"{split}-0000{i}-of-00002.tfrecord" for split in ("train", "dev", "test")
           for i in range(2)])
    assert json.load(open(os.path.join(output_dir, "metadata.json"))) == metadata
    summary = preprocess.format_summary(metadata)
    assert "dropped.overlaps_eval" in summary and summary.splitlines()[0].split() == [
        "train", "dev", "test"]


def test_metadata_lists_every_shard_with_its_records_and_sha256(full_run, corpus, tmp_path,
                                                                tiny_model_path):
    output_dir, metadata = full_run
    sparse = run_job(tmp_path, train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path,
                     num_shards=8)  # 5 pairs: at least 3 shards are empty files
    assert sum(not shard["records"] for shard in sparse["splits"]["train"]["shards"]) >= 3
    for output_dir, metadata in ((output_dir, metadata), (str(tmp_path), sparse)):
        check_shard_records(output_dir, metadata)


def check_shard_records(output_dir, metadata):
    for split, counts in metadata["splits"].items():
        files = sorted(glob.glob(os.path.join(output_dir, features.shard_pattern(split))))
        assert [shard["file"] for shard in counts["shards"]] == [
            os.path.basename(path) for path in files]
        for shard, path in zip(counts["shards"], files):
            assert set(shard) == {"file", "records", "sha256"}
            assert shard["records"] == sum(1 for _ in tf.data.TFRecordDataset(path))
            assert shard["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert sum(shard["records"] for shard in counts["shards"]) == counts["written"]


def test_given_tokenizer_and_hash_carved_splits(corpus, tmp_path, tiny_model_path):
    metadata = run_job(tmp_path, train=[f"tsv:{corpus}/train.tsv"],
                       split_fractions={"dev": 0.2, "test": 0.2},
                       tokenizer_model=tiny_model_path, num_shards=1)
    model = open(tiny_model_path, "rb").read()
    assert open(tmp_path / "spm.model", "rb").read() == model
    assert metadata["tokenizer"]["trained"] is False
    assert metadata["tokenizer"]["sha256"] == hashlib.sha256(model).hexdigest()
    fractions = transforms.SplitFractions(dev=0.2, test=0.2)
    total = 0
    for split in ("train", "dev", "test"):
        examples = read_split(str(tmp_path), split)
        total += len(examples)
        assert examples, split
        for example in examples:
            assert transforms.split_of(example[features.INPUTS_TEXT].decode(), fractions) == split
    assert metadata["splits"]["train"]["dropped"]["overlaps_eval"] == 0  # impossible by hash
    assert total == sum(counts["written"] for counts in metadata["splits"].values())


def test_separate_vocabularies(corpus, tmp_path):
    metadata = run_job(tmp_path, train=[f"tsv:{corpus}/train.tsv"], separate_vocabs=True,
                       vocab_size=60, model_type="bpe", max_length=64, num_shards=1)
    tokenizer = metadata["tokenizer"]
    assert tokenizer["shared"] is False and tokenizer["model_type"] == "bpe"
    assert (tokenizer["source"]["path"], tokenizer["target"]["path"]) == (
        "spm_source.model", "spm_target.model")
    source, target = tokenizer_lib.load_tokenizers(str(tmp_path), metadata)
    assert source.sha256 != target.sha256
    for example in read_split(str(tmp_path), "train")[:10]:
        assert example["inputs"].tolist() == source.encode(example["inputs_text"].decode())
        assert example["targets"].tolist() == target.encode(example["targets_text"].decode())


def test_same_shards_whatever_the_worker_count(corpus, tmp_path, monkeypatch):
    # Worker processes import `pipeline` from the repo even when it is not pip-installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    job = dict(train=[f"tsv:{corpus}/train.tsv"], dev=[f"tsv:{corpus}/dev.tsv"],
               vocab_size=120, max_length=64, num_shards=3,
               batch_size=4)  # ~10 batches, so both workers get some
    one = run_job(tmp_path / "one", beam_args=["--direct_num_workers=1"], **job)
    two = run_job(tmp_path / "two", beam_args=[
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"], **job)
    assert one["splits"] == two["splits"]
    assert one["tokenizer"]["sha256"] == two["tokenizer"]["sha256"]
    first, second = shard_bytes(tmp_path / "one"), shard_bytes(tmp_path / "two")
    assert len(first) == 6 and first == second  # 3 train + 3 dev shards


def test_different_line_counts_fail_before_writing_anything(tmp_path):
    (tmp_path / "src.txt").write_bytes(b"a\nb\nc\n")
    (tmp_path / "tgt.txt").write_bytes(b"x\ny\n")
    with pytest.raises(sources.SourceError, match=r"src.txt has 3 lines.*tgt.txt has 2 lines"):
        run_job(tmp_path / "out", train=[f"text:{tmp_path}/src.txt,{tmp_path}/tgt.txt"])
    assert not (tmp_path / "out").exists()


def test_a_failure_inside_the_job_leaves_no_completed_marker(tmp_path, tiny_model_path):
    (tmp_path / "src.txt").write_bytes(b"a\nb\n")
    (tmp_path / "tgt.txt").write_bytes(b"x\ny\n")
    pipeline = beam.Pipeline(options=preprocess.pipeline_options_from_argv([]))
    preprocess.build_pipeline(pipeline, train=[f"text:{tmp_path}/src.txt,{tmp_path}/tgt.txt"],
                              output_dir=str(tmp_path / "out"), tokenizer_model=tiny_model_path)
    (tmp_path / "tgt.txt").write_bytes(b"x\n")  # the file changes after the driver's check
    with pytest.raises(Exception) as error:
        pipeline.run().wait_until_finish()
    assert "differ in length" in preprocess._user_error_in(error.value)
    assert not (tmp_path / "out" / features.COMPLETED_FILE).exists()


def test_completed_output_is_refused_without_overwrite(corpus, tmp_path, tiny_model_path):
    job = dict(train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path)
    run_job(tmp_path, num_shards=3, **job)
    (tmp_path / "notes.txt").write_text("not ours")
    with pytest.raises(preprocess.PreprocessError, match="pass --overwrite"):
        run_job(tmp_path, num_shards=1, **job)
    assert len(glob.glob(str(tmp_path / "train-*"))) == 3
    run_job(tmp_path, num_shards=1, overwrite=True, **job)
    assert [os.path.basename(p) for p in glob.glob(str(tmp_path / "train-*"))] == [
        "train-00000-of-00001.tfrecord"]
    assert (tmp_path / "notes.txt").exists() and (tmp_path / features.COMPLETED_FILE).exists()


def test_leftovers_of_an_unfinished_run_need_overwrite(corpus, tmp_path, tiny_model_path):
    (tmp_path / "train-00000-of-00009.tfrecord").write_bytes(b"stale")
    job = dict(train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path,
               num_shards=1)
    with pytest.raises(preprocess.PreprocessError, match="unfinished earlier run"):
        run_job(tmp_path, **job)
    run_job(tmp_path, overwrite=True, **job)
    assert not (tmp_path / "train-00000-of-00009.tfrecord").exists()


# --------------------------------------------------------------------------------------------
# Command line


def run_cli(argv, capsys):
    """Runs main() in-process on a private FlagValues; returns (exit code, stdout, stderr)."""
    flag_values = flags.FlagValues()
    preprocess.define_flags(flag_values)
    code = 0
    try:
        remaining = preprocess.parse_flags(["s2s-preprocess"] + argv, flag_values)
        preprocess.main(remaining, flag_values)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["--train=tsv:/no/such.tsv", "--output_dir=OUT"], "no such file: /no/such.tsv"),
    (["--train=xml:a.xml", "--output_dir=OUT"], "bad source spec 'xml:a.xml'"),
    (["--train=cmudict", "--output_dir=OUT", "--split_fractions=dev:0.5,test:0.6"],
     "leave nothing for train"),
    (["--train=cmudict", "--output_dir=OUT", "--split_fractions=dev=0.1"], "bad --split_fractions"),
    (["--train=cmudict", "--output_dir=OUT", "--vocab_size=abc"], "--vocab_size=abc"),
    (["--train=cmudict", "--output_dir=OUT", "--vocab_sise=8000"], "unknown flag(s): --vocab_sise"),
    (["--train=cmudict"], "--output_dir is required"),
    (["--output_dir=OUT"], "--train is required"),
])
def test_cli_bad_input_is_one_error_line(argv, message, tmp_path, capsys, monkeypatch):
    argv = [arg.replace("OUT", str(tmp_path / "out")) for arg in argv]
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("s2s-preprocess: error: ")
    assert message in err
    assert not (tmp_path / "out").exists()
    assert not os.listdir(tmp_path / "tmp")  # not even Beam's pipeline temp dir


def test_a_bad_input_found_inside_the_job_is_one_line_too(corpus, tmp_path, capsys):
    code, _, err = run_cli([f"--train=tsv:{corpus}/test.tsv", f"--output_dir={tmp_path}",
                            "--vocab_size=10"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "vocab_size 10 is too small" in err
    assert "Traceback" not in err
    assert not (tmp_path / features.COMPLETED_FILE).exists()


def test_cli_runs_and_prints_a_summary_table(corpus, tmp_path, capsys, tiny_model_path):
    code, out, _ = run_cli([f"--train=tsv:{corpus}/train.tsv", f"--output_dir={tmp_path}",
                            f"--tokenizer_model={tiny_model_path}", "--max_length=64",
                            "--num_shards=1", "--direct_num_workers=1"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["read"] == ["40"] and rows["dropped.invalid_utf8"] == ["1"]
    assert f"wrote {tmp_path}" in out


def test_console_script_fails_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess", "--train=tsv:/no/such.tsv",
         f"--output_dir={tmp_path}/out"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "s2s-preprocess: error: tsv:/no/such.tsv: no such file: /no/such.tsv")


def test_beam_pipeline_flags_pass_through():
    flag_values = flags.FlagValues()
    preprocess.define_flags(flag_values)
    remaining = preprocess.parse_flags([
        "s2s-preprocess", "--train=tsv:gs://bucket/train.tsv", "--output_dir=gs://bucket/out",
        "--runner=DataflowRunner", "--project", "my-project", "--region=europe-west4",
        "--temp_location=gs://bucket/tmp", "--setup_file=./setup.py", "--num_workers=8",
        "--vocab_size=16000"], flag_values)
    assert flag_values.vocab_size == 16000 and flag_values.train == ["tsv:gs://bucket/train.tsv"]
    options = preprocess.pipeline_options_from_argv(remaining[1:])
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == (
        "my-project", "europe-west4", "gs://bucket/tmp")
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    local = preprocess.pipeline_options_from_argv(["--direct_num_workers=2"])
    assert local.view_as(StandardOptions).runner == preprocess.DEFAULT_LOCAL_RUNNER
    assert local.view_as(DirectOptions).direct_num_workers == 2


# --------------------------------------------------------------------------------------------
# Output directory: a run is staged and swapped in at the end; stale temp files (issue 23)


def staging_dirs(output_dir):
    return sorted(glob.glob(os.path.join(str(output_dir), ".preprocess-staging-*")))


def snapshot(output_dir):
    """Every file under output_dir outside staging dirs: relative path -> bytes."""
    files = {}
    for directory, dirs, names in os.walk(output_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".preprocess-staging-")]
        for name in names:
            path = os.path.join(directory, name)
            files[os.path.relpath(path, output_dir)] = open(path, "rb").read()
    return files


def write_outputs_then_fail(*args, **kwargs):
    """transforms.write_outputs that dies after writing everything, marker included."""
    REAL_WRITE_OUTPUTS(*args, **kwargs)
    raise RuntimeError("injected: the worker died after writing its outputs")


REAL_WRITE_OUTPUTS = transforms.write_outputs


@pytest.mark.parametrize("fault", ["bad_input_inside_the_job", "stage_dies_after_writing"])
def test_a_failed_overwrite_rerun_keeps_the_earlier_output(fault, corpus, tmp_path,
                                                           tiny_model_path, monkeypatch):
    out = tmp_path / "out"
    earlier = run_job(out, train=[f"tsv:{corpus}/train.tsv"], tokenizer_model=tiny_model_path,
                      max_length=64, num_shards=3)
    before = snapshot(out)
    rerun = dict(train=[f"tsv:{corpus}/test.tsv"], num_shards=1, overwrite=True)
    if fault == "bad_input_inside_the_job":  # the tokenizer is trained inside the job
        with pytest.raises(preprocess.PreprocessError, match=(
                r"vocab_size 10 is too small.*; .*out still holds the earlier complete run, "
                "unchanged")):
            run_job(out, vocab_size=10, **rerun)
    else:
        monkeypatch.setattr(transforms, "write_outputs", write_outputs_then_fail)
        with pytest.raises(RuntimeError, match="injected") as error:
            run_job(out, tokenizer_model=tiny_model_path, **rerun)
        assert error.value.__notes__ == [
            f"s2s-preprocess: {out} still holds the earlier complete run, unchanged"]
        staged, = staging_dirs(out)  # the new run got as far as a complete staged output
        assert sorted(os.listdir(staged)) == [
            "_COMPLETED", "_STARTED", "metadata.json", "spm.model",
            "train-00000-of-00001.tfrecord"]
    assert snapshot(out) == before
    assert dataset.load_metadata(str(out)) == earlier
    assert len(read_split(str(out), "train")) == earlier["splits"]["train"]["written"]


def test_a_successful_overwrite_rerun_leaves_only_the_new_files(corpus, tmp_path,
                                                                tiny_model_path):
    out = tmp_path / "out"
    earlier = run_job(out, train=[f"tsv:{corpus}/train.tsv"], tokenizer_model=tiny_model_path,
                      max_length=64, num_shards=3)
    assert earlier["dead_letter"]["count"] == 4
    (out / "notes.txt").write_text("the user's own file")
    metadata = run_job(out, train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path,
                       num_shards=1, overwrite=True)
    assert sorted(os.listdir(out)) == [  # no stale shard, dead-letter dir or staging dir
        "_COMPLETED", "metadata.json", "notes.txt", "spm.model", "train-00000-of-00001.tfrecord"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert dataset.load_metadata(str(out)) == metadata
    assert metadata["num_shards"] == {"train": 1} and metadata["dead_letter"]["count"] == 0
    assert len(read_split(str(out), "train")) == metadata["splits"]["train"]["written"] == 5


def test_a_failure_while_publishing_says_the_directory_is_incomplete(
        corpus, tmp_path, tiny_model_path, monkeypatch):
    out = tmp_path / "out"
    job = dict(train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path)
    run_job(out, num_shards=3, **job)
    moves = []

    def move_then_fail(source, destination):
        moves.append(os.path.basename(destination))
        if len(moves) == 2:
            raise tf.errors.PermissionDeniedError(None, None, "injected: permission denied")
        REAL_MOVE_INTO_PLACE(source, destination)

    monkeypatch.setattr(preprocess, "_move_into_place", move_then_fail)
    with pytest.raises(preprocess.PreprocessError, match=(
            r"^cannot publish the run staged in .*: injected: permission denied.*; "
            f"{out} is incomplete \\(no _COMPLETED\\): rerun with --overwrite$")):
        run_job(out, num_shards=1, overwrite=True, **job)
    with pytest.raises(dataset.DataDirError, match="no _COMPLETED marker"):
        dataset.load_metadata(str(out))
    monkeypatch.undo()
    with pytest.raises(preprocess.PreprocessError, match="pass --overwrite"):
        run_job(out, num_shards=1, **job)
    metadata = run_job(out, num_shards=1, overwrite=True, **job)
    assert dataset.load_metadata(str(out)) == metadata
    assert sorted(glob.glob(str(out / "train-*"))) == [str(out / "train-00000-of-00001.tfrecord")]


def test_a_failed_first_run_publishes_nothing_and_a_rerun_needs_no_overwrite(
        corpus, tmp_path, tiny_model_path):
    out = tmp_path / "out"
    with pytest.raises(preprocess.PreprocessError,
                       match=f"vocab_size 10 is too small.*; nothing was published to {out}$"):
        run_job(out, train=[f"tsv:{corpus}/test.tsv"], vocab_size=10)
    assert snapshot(out) == {} and len(staging_dirs(out)) == 1
    metadata = run_job(out, train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path,
                       num_shards=1)
    assert dataset.load_metadata(str(out)) == metadata


REAL_MOVE_INTO_PLACE = preprocess._move_into_place

NEW_RUN = {"created_at": "2026-01-02T03:04:05Z", "num_shards": {"train": 2},
           "tokenizer": {"source": {"path": "spm.model"}, "target": {"path": "spm.model"}},
           "dead_letter": {"path": "dead_letter/dead_letter.jsonl", "count": 1}}


def fake_runs(tmp_path):
    """An earlier complete run in out/ (3 shards, no dead letters) and a staged new one."""
    out = tmp_path / "out"
    staged = out / ".preprocess-staging-0123456789abcdef0123456789abcdef"
    (staged / "dead_letter").mkdir(parents=True)
    for name in ("train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
                 "train-00002-of-00003.tfrecord", "spm.model", "metadata.json", "_COMPLETED"):
        (out / name).write_text(f"old {name}")
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                 "spm.model", "metadata.json", "dead_letter/dead_letter.jsonl", "_STARTED",
                 "_COMPLETED", ".spm.model.tmp-" + "a" * 32):
        (staged / name).write_text(f"new {name}")
    return out, staged


def test_publishing_again_after_a_failed_try_completes_it(tmp_path, monkeypatch):
    out, staged = fake_runs(tmp_path)
    calls = []

    def move_then_fail(source, destination):
        calls.append(destination)
        if len(calls) == 3:
            raise tf.errors.UnavailableError(None, None, "injected: connection reset")
        REAL_MOVE_INTO_PLACE(source, destination)

    monkeypatch.setattr(preprocess, "_move_into_place", move_then_fail)
    with pytest.raises(preprocess.PreprocessError, match="injected: connection reset"):
        preprocess.publish_staged_output(NEW_RUN, staging_dir=str(staged), output_dir=str(out))
    assert not (out / "_COMPLETED").exists()
    monkeypatch.undo()  # the runner retries the step
    preprocess.publish_staged_output(NEW_RUN, staging_dir=str(staged), output_dir=str(out))
    assert snapshot(out) == {
        "_COMPLETED": b"2026-01-02T03:04:05Z\n",
        "train-00000-of-00002.tfrecord": b"new train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord": b"new train-00001-of-00002.tfrecord",
        "spm.model": b"new spm.model", "metadata.json": b"new metadata.json",
        "dead_letter/dead_letter.jsonl": b"new dead_letter/dead_letter.jsonl"}
    assert staging_dirs(out) == []


def test_publish_refuses_a_staged_run_that_lacks_a_file(tmp_path):
    out, staged = fake_runs(tmp_path)
    before = snapshot(out)
    (staged / "train-00001-of-00002.tfrecord").unlink()
    with pytest.raises(preprocess.PreprocessError,
                       match=r"lacks train-00001-of-00002.tfrecord; .*out was left as it was"):
        preprocess.publish_staged_output(NEW_RUN, staging_dir=str(staged), output_dir=str(out))
    assert snapshot(out) == before


def test_only_our_stale_temp_files_are_removed(corpus, tmp_path, tiny_model_path):
    out = tmp_path / "out"
    (out / "dead_letter").mkdir(parents=True)
    hex32 = "0123456789abcdef" * 2
    ours_stale = [".train-00000-of-00001.tfrecord.tmp-" + hex32, ".metadata.json.tmp-" + hex32,
                  f"dead_letter/.dead_letter.jsonl.tmp-{hex32}",
                  f".preprocess-staging-{hex32}/train-00000-of-00004.tfrecord",
                  f".preprocess-staging-{hex32}/_STARTED"]
    users = [".notes.txt.tmp-" + hex32,  # a temp name, but not of one of our outputs
             ".metadata.json.tmp-mine", "metadata.json.tmp-" + hex32, "spm.model.bak",
             ".preprocess-staging-backup/keep.txt", f"dead_letter/.spm.model.tmp-{hex32}"]
    concurrent = [".spm.model.tmp-" + "f" * 32, f".preprocess-staging-{'e' * 32}/_STARTED"]
    now = time.time()
    for names, mtime in ((ours_stale, now - 3600), (users, now - 3600),
                         (concurrent, now + 3600)):  # concurrent: written after our start
        for name in names:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(name)
            os.utime(out / name, (mtime, mtime))
    metadata = run_job(out, train=[f"tsv:{corpus}/test.tsv"], tokenizer_model=tiny_model_path,
                       num_shards=1)  # leftovers of failed attempts need no --overwrite
    assert metadata["splits"]["train"]["written"] == 5
    left = set(snapshot(out)) | {os.path.relpath(path, out) for directory in staging_dirs(out)
                                 for path in glob.glob(os.path.join(directory, "*"))}
    assert left == set(users) | set(concurrent) | {
        "_COMPLETED", "metadata.json", "spm.model", "train-00000-of-00001.tfrecord"}


# --------------------------------------------------------------------------------------------
# A rerun of a completed run with the same inputs and settings (an orchestrator's retry)


def file_states(output_dir):
    """Every file under output_dir (staging dirs included): relative path -> (bytes, mtime)."""
    states = {}
    for directory, _, names in os.walk(output_dir):
        for name in names:
            path = os.path.join(directory, name)
            states[os.path.relpath(path, output_dir)] = (open(path, "rb").read(),
                                                        os.stat(path).st_mtime_ns)
    return states


def count_beam_runs(monkeypatch, *, forbid=False):
    """Counts Pipeline.run calls; with forbid, a call fails the test instead."""
    runs = []
    real_run = beam.Pipeline.run

    def run(self, *args, **kwargs):
        runs.append(self)
        if forbid:
            raise AssertionError("the Beam pipeline must not run")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", run)
    return runs


def test_a_retry_of_a_completed_run_succeeds_without_redoing_it(tmp_path, capsys, monkeypatch):
    train = tmp_path / "train.tsv"
    train.write_bytes(tsv(good_pairs()))
    out = tmp_path / "out"
    argv = [f"--train=tsv:{train}", f"--output_dir={out}", "--vocab_size=120",
            "--max_length=64", "--num_shards=2"]
    code, first_out, _ = run_cli(argv + ["--direct_num_workers=1"], capsys)
    assert code == 0 and f"wrote {out}" in first_out
    metadata = dataset.load_metadata(str(out))
    request = metadata["request"]
    assert request["inputs"] == [{"use": "train", "spec": f"tsv:{train}", "path": str(train),
                                  "size": train.stat().st_size,
                                  "sha256": hashlib.sha256(train.read_bytes()).hexdigest()}]
    assert request["settings"]["vocab_size"] == 120 and "output_dir" not in request["settings"]
    assert len(request["fingerprint"]) == 64
    before = file_states(out)

    # The retry: Beam never runs, nothing in the output dir is touched, exit code 0. Runner
    # options (here the worker count) do not change the result, so they may differ.
    forbidden = count_beam_runs(monkeypatch, forbid=True)
    code, retry_out, retry_err = run_cli(argv + ["--direct_num_workers=2"], capsys)
    assert (code, retry_err) == (0, "")
    assert retry_out == (f"s2s-preprocess: {out} already holds a completed run of these inputs "
                         f"and settings (created_at {metadata['created_at']}); nothing to do\n")
    assert preprocess.preprocess(  # the library call returns the completed run's metadata
        pipeline_options=preprocess.pipeline_options_from_argv([]), output_dir=str(out),
        train=[f"tsv:{train}"], vocab_size=120, max_length=64, num_shards=2) == metadata
    assert forbidden == [] and file_states(out) == before

    # Another setting: refused, naming it, before anything runs.
    code, _, err = run_cli([a.replace("--vocab_size=120", "--vocab_size=100") for a in argv],
                           capsys)
    assert code == 2 and err.count("\n") == 1
    assert "completed preprocess run of other inputs or settings" in err
    assert "the settings differ: --vocab_size 120 -> 100" in err and "inputs differ" not in err
    assert err.rstrip().endswith("pass --overwrite to replace it")

    # One changed input line: refused, naming the file and its old and new sha256.
    old_sha256 = hashlib.sha256(train.read_bytes()).hexdigest()
    train.write_bytes(train.read_bytes().replace(b"open the file now", b"open the files now"))
    new_sha256 = hashlib.sha256(train.read_bytes()).hexdigest()
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert (f"the inputs differ: {train} size {request['inputs'][0]['size']} -> "
            f"{train.stat().st_size}, "
            f"sha256 {old_sha256[:12]} -> {new_sha256[:12]}") in err
    assert "settings differ" not in err and "pass --overwrite" in err
    assert forbidden == [] and file_states(out) == before

    # --overwrite always recomputes: the new line is in the shards, the new sha256 recorded.
    monkeypatch.undo()
    runs = count_beam_runs(monkeypatch)
    code, out_text, _ = run_cli(argv + ["--overwrite"], capsys)
    assert code == 0 and f"wrote {out}" in out_text and len(runs) == 1
    recomputed = dataset.load_metadata(str(out))
    assert recomputed["request"]["inputs"][0]["sha256"] == new_sha256
    assert recomputed["request"]["fingerprint"] != request["fingerprint"]
    texts = {example["inputs_text"].decode() for example in read_split(str(out), "train")}
    assert "open the files now" in texts and "open the file now" not in texts
    # ... and with identical inputs and settings it recomputes too.
    code, out_text, _ = run_cli(argv + ["--overwrite"], capsys)
    assert code == 0 and f"wrote {out}" in out_text and len(runs) == 2
    assert dataset.load_metadata(str(out))["request"] == recomputed["request"]


def test_a_completed_run_without_a_fingerprint_or_a_file_is_not_reused(
        corpus, tmp_path, tiny_model_path, monkeypatch):
    out = tmp_path / "out"
    job = dict(train=[f"tsv:{corpus}/test.tsv"], dev=[f"gettext:{corpus}/app.mo"],
               tokenizer_model=tiny_model_path, num_shards=1)
    metadata = run_job(out, **job)
    assert [(entry["use"], entry["spec"]) for entry in metadata["request"]["inputs"]] == [
        ("train", f"tsv:{corpus}/test.tsv"), ("dev", f"gettext:{corpus}/app.mo"),
        ("tokenizer_model", tiny_model_path)]
    assert metadata["request"]["inputs"][2]["sha256"] == tokenizer_lib.sha256_of_file(
        tiny_model_path)
    forbidden = count_beam_runs(monkeypatch, forbid=True)
    assert run_job(out, **job) == metadata
    # A shard gone: the run is not reused as it is.
    shard = out / "dev-00000-of-00001.tfrecord"
    shard.rename(tmp_path / "kept.tfrecord")
    with pytest.raises(preprocess.PreprocessError, match=(
            "holds a completed run of these inputs and settings, but "
            "dev-00000-of-00001.tfrecord is missing; pass --overwrite")):
        run_job(out, **job)
    (tmp_path / "kept.tfrecord").rename(shard)
    # A run written before fingerprints were recorded: refused as before.
    legacy = {key: value for key, value in metadata.items() if key != "request"}
    (out / "metadata.json").write_text(json.dumps(legacy))
    with pytest.raises(preprocess.PreprocessError, match=(
            "already holds a completed preprocess run that recorded no fingerprint of its "
            "inputs and settings; pass --overwrite to replace it")):
        run_job(out, **job)
    # The tokenizer model file replaced by another one: the inputs differ.
    (out / "metadata.json").write_text(json.dumps(metadata))
    model = tmp_path / "model_copy.model"
    model.write_bytes(open(tiny_model_path, "rb").read())
    job["tokenizer_model"] = str(model)
    with pytest.raises(preprocess.PreprocessError, match=(
            f"the inputs differ: --tokenizer_model {model} is new, --tokenizer_model "
            f"{tiny_model_path} is no longer read; the settings differ: --tokenizer_model ")):
        run_job(out, **job)
    assert forbidden == []
    monkeypatch.undo()
    run_job(out, overwrite=True, **job)
    forbidden = count_beam_runs(monkeypatch, forbid=True)
    model.write_bytes(tokenizer_lib.train_sentencepiece(
        [text for pair in good_pairs() for text in pair], vocab_size=50))
    with pytest.raises(preprocess.PreprocessError, match=(
            f"the inputs differ: --tokenizer_model {model} (size [0-9]+ -> [0-9]+, )?"
            "sha256 [0-9a-f]{12} -> [0-9a-f]{12}\\); pass --overwrite")):
        run_job(out, **job)
    assert forbidden == []
