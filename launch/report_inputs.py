"""What the report reads from a workdir and a data dir. A report is most wanted when a
run went wrong, so every reader here turns a missing or unreadable file into a note for
the page instead of an exception."""

import dataclasses
import json
import os
import re

import tensorflow as tf
from tensorflow.core.util import event_pb2

from launch import eval_lines, eval_records
from launch.report_analysis import Sentence
from pipeline import features

EVAL_DIR, TRAIN_DIR = "eval", "train"
TRAIN_TAGS = ("loss", "dev_loss")  # launch/trainer.py: tf.summary.scalar under WORKDIR/train
SPLIT_ORDER = ("dev", "test")
MAX_TRAIN_TARGETS = 100_000  # training targets read for word frequencies (a few seconds)
_HYP_FILE = re.compile(r"^hyp-(\d+)\.(tsv|txt)$")


@dataclasses.dataclass
class LinesFile:
    """hyp-<step>.tsv of one split, parsed."""
    path: str
    score_names: list[str]
    sentences: list[Sentence]
    dropped: int  # input lines preprocessing dropped (empty cells)
    malformed: list[int] = dataclasses.field(default_factory=list)  # skipped line numbers


def read_json(path: str, notes: list[str], *, what: str) -> dict | None:
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except tf.errors.NotFoundError:
        notes.append(f"no {what}: {path} does not exist")
    except (tf.errors.OpError, ValueError) as error:
        notes.append(f"{what} {path} is unreadable ({error})")
    return None


def recorded_data_dir(config: dict | None) -> str | None:
    """The data dir a config.json names, if it names one."""
    config = config or {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return config.get("data_dir") or data.get("data_dir") or data.get("dir") or None


def eval_splits(workdir: str) -> list[str]:
    """Splits with an evaluation directory: dev, test, then others by name."""
    root = os.path.join(workdir, EVAL_DIR)
    if not tf.io.gfile.isdir(root):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(root)
             if tf.io.gfile.isdir(os.path.join(root, n))]
    return sorted(names, key=lambda n: (SPLIT_ORDER.index(n) if n in SPLIT_ORDER else 9, n))


def read_split_metrics(workdir: str, split: str, notes: list[str]) -> list[dict]:
    path = os.path.join(workdir, EVAL_DIR, split, eval_records.METRICS_FILE)
    try:
        return eval_records.read_metrics(path)
    except eval_records.MetricsFileError as error:
        notes.append(str(error))
        return []


def scalar_value(value) -> float | None:
    """A summary value's number: simple_value (TF1 style) or a scalar tensor (TF2)."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        array = tf.make_ndarray(value.tensor)
        return float(array.reshape(-1)[0]) if array.size == 1 and array.dtype.kind in "fiu" \
            else None
    return None


def read_train_scalars(workdir: str, notes: list[str], *,
                       tags=TRAIN_TAGS) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the trainer's event files, in step order; a step
    written again after a restart keeps its latest value (files in name order, which
    starts with their creation time)."""
    pattern = os.path.join(workdir, TRAIN_DIR, "events.out.tfevents.*")
    by_tag: dict[str, dict[int, float]] = {}
    paths = sorted(tf.io.gfile.glob(pattern))
    if not paths:
        notes.append(f"no training summaries under {os.path.join(workdir, TRAIN_DIR)}: "
                     "the loss curve is missing")
    for path in paths:
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag in tags:
                        number = scalar_value(value)
                        if number is not None:
                            by_tag.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:
            pass  # the trainer is writing this file: keep the records read so far
        except tf.errors.OpError as error:
            notes.append(f"{path} is unreadable ({error.message})")
    return {tag: sorted(by_tag[tag].items()) for tag in tags if tag in by_tag}


def hypothesis_steps(workdir: str, split: str) -> dict[int, set]:
    """step -> the extensions ("tsv", "txt") of its hypothesis files."""
    directory = os.path.join(workdir, EVAL_DIR, split)
    found: dict[int, set] = {}
    for name in tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []:
        match = _HYP_FILE.match(name)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


def parse_lines_tsv(text: str, *, path: str) -> LinesFile:
    """hyp-<step>.tsv (launch/eval_lines.py): a header, then file, line, source,
    reference, hypothesis and the sentence scores per input line."""
    lines = text.splitlines()
    header = lines[0].split("\t") if lines else []
    fixed = len(eval_lines.TSV_COLUMNS)
    if tuple(header[:fixed]) != eval_lines.TSV_COLUMNS:
        raise ValueError(f"{path} line 1: expected the columns "
                         f"{', '.join(eval_lines.TSV_COLUMNS)}, then scores")
    parsed = LinesFile(path=path, score_names=header[fixed:], sentences=[], dropped=0)
    for number, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        if len(cells) != len(header):
            parsed.malformed.append(number)
            continue
        origin, position, source, reference, hypothesis = cells[:fixed]
        if not source and not reference and not hypothesis:
            parsed.dropped += 1
            continue
        try:
            scores = {name: float(cell) for name, cell in zip(parsed.score_names,
                                                                cells[fixed:])}
            sentence = Sentence(origin, int(position or 0), source, reference, hypothesis,
                                scores)
        except ValueError:
            parsed.malformed.append(number)
            continue
        parsed.sentences.append(sentence)
    return parsed


def read_lines_tsv(path: str, notes: list[str]) -> LinesFile | None:
    try:
        with tf.io.gfile.GFile(path) as f:
            return parse_lines_tsv(f.read(), path=path)
    except tf.errors.OpError as error:
        notes.append(f"{path} is unreadable ({error.message})")
    except ValueError as error:
        notes.append(str(error))
    return None


def read_train_targets(data_dir: str, *, limit: int = MAX_TRAIN_TARGETS) -> list[str]:
    """Up to `limit` training target texts (the first shards'), [] when the data dir has
    no train shards or they carry no text."""
    paths = sorted(tf.io.gfile.glob(os.path.join(data_dir, features.shard_pattern("train"))))
    if not paths:
        return []
    spec = {features.TARGETS_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=b"")}
    records = (tf.data.TFRecordDataset(paths).take(limit).batch(4096)
               .map(lambda batch: tf.io.parse_example(batch, spec)[features.TARGETS_TEXT]))
    try:
        texts = [t.decode() for batch in records for t in batch.numpy()]
    except tf.errors.OpError:
        return []
    return [t for t in texts if t]
