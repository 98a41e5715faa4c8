"""The trainer and evaluator on a damaged data dir: a clear error naming the file, or a
count of what was skipped; never a silent change of the data, never a traceback."""

import os
import random
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

import fault_injection
import toy_data
from configs import tiny
from launch import evaluator, exit_codes, trainer
from pipeline import dataset, features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A toy data dir whose metadata.json lists its shards (2 train of 256, dev of 32)."""
    data_dir = toy_data.make_toy_data_dir(str(tmp_path_factory.mktemp("pristine")))
    fault_injection.record_shards(data_dir)
    return data_dir


@pytest.fixture
def data_dir(pristine, tmp_path):
    """A copy of `pristine` for a test to damage."""
    return shutil.copytree(pristine, str(tmp_path / "data"))


@pytest.fixture(scope="module")
def workdir(pristine, tmp_path_factory):
    """A workdir with one checkpoint (step 2), for the evaluator."""
    path = str(tmp_path_factory.mktemp("work"))
    trainer.train(config(num_steps=2, checkpoint_every_steps=2), workdir=path,
                  data_dir=pristine, strategy=tf.distribute.get_strategy())
    return path


def config(**train):
    values = tiny.get_config()
    for key, value in train.items():
        setattr(values.train, key, value)
    return values


def train(values, *, data_dir, workdir):
    return trainer.train(values, workdir=workdir, data_dir=data_dir,
                         strategy=tf.distribute.get_strategy())


def shard(data_dir, name):
    return os.path.join(data_dir, name)


def run_cli(module, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def assert_error_line(result, *, prog, message):
    """Exit 2 (not restartable), no traceback, the last stderr line is the error."""
    assert result.returncode == exit_codes.ERROR, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and message in last, last


# ---- 1. a shard deleted, or cut on a record boundary --------------------------------------

def test_training_refuses_a_missing_shard_before_touching_the_workdir(data_dir, tmp_path):
    os.remove(shard(data_dir, "train-00001-of-00002.tfrecord"))
    work = tmp_path / "work"
    with pytest.raises(dataset.DataDirError, match="train-00001-of-00002.tfrecord: shard "
                                                   "missing"):
        train(config(), data_dir=data_dir, workdir=str(work))
    assert not work.exists()


def test_evaluation_refuses_a_shard_cut_on_a_record_boundary(data_dir, workdir):
    fault_injection.truncate_to_records(shard(data_dir, "dev-00000-of-00001.tfrecord"), 20)
    with pytest.raises(dataset.DataDirError, match="dev-00000-of-00001.tfrecord: 20 records, "
                                                   "but metadata.json records 32"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev")
    assert not os.path.exists(os.path.join(workdir, "eval"))


def test_evaluation_refuses_a_missing_test_shard_from_the_command_line(data_dir, workdir):
    os.remove(shard(data_dir, "test-00000-of-00001.tfrecord"))
    result = run_cli("launch.evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}",
                     "--split=test")
    assert_error_line(result, prog="s2s-evaluate",
                      message="test-00000-of-00001.tfrecord: shard missing")


# ---- 2. a corrupt record -------------------------------------------------------------------

def test_training_names_the_shard_and_record_of_a_corrupt_record(data_dir, tmp_path):
    path = shard(data_dir, "train-00001-of-00002.tfrecord")
    fault_injection.flip_byte(path, record=100)
    with pytest.raises(dataset.DataDirError) as error:
        train(config(num_steps=200, checkpoint_every_steps=100), data_dir=data_dir,
              workdir=str(tmp_path / "work"))
    assert str(error.value).startswith(f"{path}: record 100 is unreadable (corrupted record")
    assert isinstance(error.value.__cause__, tf.errors.DataLossError)


def test_train_cli_exits_with_the_corrupt_shard_not_a_traceback(data_dir, tmp_path):
    fault_injection.flip_byte(shard(data_dir, "train-00000-of-00002.tfrecord"), record=3)
    result = run_cli("launch.train", f"--config={REPO}/configs/tiny.py",
                     f"--data_dir={data_dir}", f"--workdir={tmp_path / 'work'}",
                     "--config.train.num_steps=20")
    assert_error_line(result, prog="s2s-train",
                      message="train-00000-of-00002.tfrecord: record 3 is unreadable")
    assert "re-run s2s-preprocess for this data with --overwrite" in result.stderr


def test_evaluate_cli_exits_with_the_corrupt_shard_not_a_traceback(data_dir, workdir):
    fault_injection.flip_byte(shard(data_dir, "dev-00000-of-00001.tfrecord"), record=30)
    result = run_cli("launch.evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}")
    assert_error_line(result, prog="s2s-evaluate",
                      message="dev-00000-of-00001.tfrecord: record 30 is unreadable")


# ---- 3. pairs longer than the largest bucket -------------------------------------------------

def short_buckets(max_fraction, **train_overrides):
    """Buckets up to 8 tokens: about half of the toy pairs are longer."""
    values = config(**train_overrides)
    values.data.max_length = 8
    values.data.max_dropped_fraction = max_fraction
    return values


def add_histogram(data_dir):
    """Metadata's per-side length histogram (8-token buckets), as preprocess writes it."""
    histogram = {"bucket_upper_bounds": [8, 16], "inputs": [0, 0], "targets": [0, 0]}
    for path in dataset.shard_files(data_dir, "train"):
        for example in tf.data.TFRecordDataset(path).map(features.parse_example):
            for side in ("inputs", "targets"):
                histogram[side][(len(example[side]) - 1) // 8] += 1
    fault_injection.edit_metadata(
        data_dir, lambda m: m.__setitem__("length_histogram", {"train": histogram}))


def test_training_refuses_to_start_when_metadata_shows_too_many_skipped(data_dir, tmp_path):
    add_histogram(data_dir)
    work = tmp_path / "work"
    with pytest.raises(dataset.DataDirError, match=r"of the 512 pairs of split 'train' have a "
                                                   r"side longer than the largest bucket "
                                                   r"boundary \(8 tokens\) and would be skipped"):
        train(short_buckets(0.01), data_dir=data_dir, workdir=str(work))
    assert not work.exists()


def test_training_stops_while_reading_when_too_many_are_skipped(data_dir, tmp_path):
    """Without a length histogram in metadata.json only reading can tell."""
    message = caught_message(short_buckets(0.01, num_steps=2000), data_dir=data_dir,
                             workdir=str(tmp_path / "work"))
    match = re.match(r"(\d+) of the first (\d+) pairs read from split 'train' had a side "
                     r"longer than the largest bucket boundary \(8 tokens\) and were "
                     r"skipped: more than max_dropped_fraction=0.01", message)
    assert match, message
    skipped, read = map(int, match.groups())
    assert read >= dataset.MIN_PAIRS_TO_JUDGE and 0.3 < skipped / read < 0.7


def caught_message(values, **kwargs):
    try:
        train(values, **kwargs)
    except dataset.DataDirError as error:
        return str(error)
    raise AssertionError("training did not stop")


def test_skipped_pairs_are_logged_once_and_in_tensorboard(data_dir, tmp_path, caplog):
    work = tmp_path / "work"
    with caplog.at_level("WARNING"):
        train(short_buckets(1.0, num_steps=20, log_every_steps=5), data_dir=data_dir,
              workdir=str(work))
    assert caplog.text.count("skipping pairs longer than 8 tokens") == 1
    values = {}
    for path in tf.io.gfile.glob(str(work / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(
                    float(tf.make_ndarray(value.tensor)))
    assert values["skipped_pairs"][-1] > 0
    assert values["skipped_pairs"] == sorted(values["skipped_pairs"])  # a running count
    assert 0.2 < values["skipped_fraction"][-1] < 0.9


# ---- the contract with the preprocess job ----------------------------------------------------

def test_a_real_preprocess_output_passes_and_its_histogram_bounds_the_skips(tmp_path):
    from pipeline import preprocess
    rng = random.Random(0)

    def line():
        words = " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 6)))
                         for _ in range(rng.randint(1, 12)))
        return f"{words}\t{words.upper()}\n"

    (tmp_path / "train.tsv").write_text("".join(line() for _ in range(1500)))
    (tmp_path / "dev.tsv").write_text("".join(line() for _ in range(60)))
    output = str(tmp_path / "out")
    preprocess.preprocess(pipeline_options=preprocess.pipeline_options_from_argv([]),
                          output_dir=output, train=[f"tsv:{tmp_path}/train.tsv"],
                          dev=[f"tsv:{tmp_path}/dev.tsv"], vocab_size=60, max_length=64,
                          num_shards=3)
    metadata = dataset.load_metadata(output)
    for split in ("train", "dev"):
        files = dataset.verified_shard_files(output, split, count_records=True)
        assert [os.path.basename(f) for f in files] == [
            s["file"] for s in metadata["splits"][split]["shards"]]
    lengths = []
    for example in tf.data.TFRecordDataset(dataset.shard_files(output, "train")).map(
            features.parse_example):
        lengths.append(max(len(example["inputs"]), len(example["targets"])))
    assert len(lengths) == metadata["splits"]["train"]["written"]
    for longest in (16, 24, 40):
        low, high = dataset.skipped_by_length(metadata, split="train", longest=longest)
        assert 0 < low <= sum(n > longest for n in lengths) <= high
    assert dataset.skipped_by_length(metadata, split="train", longest=64) == (0, 0)
