"""metrics.jsonl: one row per scored measurement, appended once, never rewritten.

Several evaluators may score one workdir (a restarted one beside a stuck one, dev and test
side by side), so rows are added under the evaluators' lease (launch/shared_files.py) and a
measurement already on record is not added again. A measurement is a checkpoint step
scored with given decoding settings; readers also drop repeats, for files written before.

Also what "best" means for the export: a configured metric and its direction.
"""

import dataclasses
import json

import tensorflow as tf

from launch import metrics as metrics_lib
from launch import shared_files

METRICS_FILE = "metrics.jsonl"
HIGHER_IS_BETTER = metrics_lib.HIGHER_IS_BETTER  # what a row can be selected by


class MetricsFileError(ValueError):
    """metrics.jsonl holds a line that is not a JSON row; the message names it."""


def measurement(row: dict) -> tuple:
    """What makes two rows the same measurement: step and decoding settings."""
    return (row["step"], row.get("beam_size"), row.get("alpha"), row.get("averaged", 1))


def read_metrics(path: str) -> list[dict]:
    """The rows of `path` in file order, each measurement once (its first row)."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    rows, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = measurement(row)
        except (ValueError, KeyError, TypeError) as error:
            raise MetricsFileError(f"{path} line {number} is not a metrics row ({error}); "
                                   "fix or remove that line") from error
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def append_metrics(path: str, row: dict) -> bool:
    """Adds `row` unless its measurement is on record; True when added. The caller holds
    the lease: the file is read, extended and replaced in one write (gs:// has no append),
    keeping every earlier byte as it was."""
    if any(measurement(r) == measurement(row) for r in read_metrics(path)):
        return False
    text = ""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    if text and not text.endswith("\n"):
        text += "\n"
    shared_files.write_text_atomically(path, text + json.dumps(row, sort_keys=True) + "\n")
    return True


@dataclasses.dataclass(frozen=True)
class BestMetric:
    """The metric that picks the exported checkpoint, and its direction."""
    name: str
    higher_is_better: bool

    def better(self, row: dict, than: dict | None) -> bool:
        """Strictly better than `than`; None, or a row without the metric, is beaten by
        anything. A tie keeps the earlier one."""
        if than is None or self.name not in than:
            return True
        if self.higher_is_better:
            return row[self.name] > than[self.name]
        return row[self.name] < than[self.name]

    def best(self, rows: list[dict]) -> dict | None:
        """The best row holding the metric; the earliest of equals."""
        best = None
        for row in rows:
            if self.name in row and self.better(row, best):
                best = row
        return best


def best_metric(name: str = "", *, metrics: tuple[str, ...]) -> BestMetric:
    """`name`, or by default the first of the run's `metrics` (config.eval), with its
    direction; MetricsError (a ValueError) when the evaluator does not measure it."""
    name = metrics_lib.selection_metric(name, metrics=metrics)
    return BestMetric(name, HIGHER_IS_BETTER[name])
