"""Early stopping: a dev metric with patience and a minimum delta, and the stop marker.

Whoever measures the dev metric decides: the separate evaluator job (s2s-evaluate on the
dev split, for a decoded metric such as BLEU or WER) or the trainer itself (its
teacher-forced `dev_loss`, single-process runs). Either writes WORKDIR/STOP_TRAINING.json
when the metric has not improved by more than `min_delta` in `patience` evaluations in a
row; the trainer checks for the marker after every call, saves a checkpoint and exits 0.
A restarted trainer finds the marker and exits at once; delete it to train on.

Configured in the run's config (`config.early_stopping`), so the trainer and every
evaluator of a workdir read the same policy from WORKDIR/config.json.
"""

import dataclasses
import json
import os

from launch import metrics as metrics_lib
from launch import shared_files

STOP_FILE = "STOP_TRAINING.json"
TRAINER_METRIC = "dev_loss"  # measured by the trainer, teacher-forced, in nats per token
# Decoded or teacher-forced metrics the evaluator measures; True where higher is better.
EVALUATOR_METRICS = metrics_lib.HIGHER_IS_BETTER


@dataclasses.dataclass(frozen=True)
class Policy:
    metric: str  # "" = off
    patience: int  # evaluations in a row without an improvement before stopping
    min_delta: float  # an improvement must beat the best so far by more than this

    @property
    def enabled(self) -> bool:
        return bool(self.metric)

    @property
    def in_trainer(self) -> bool:
        return self.metric == TRAINER_METRIC

    @property
    def higher_is_better(self) -> bool:
        return EVALUATOR_METRICS.get(self.metric, False)

    def improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        if self.higher_is_better:
            return value > best + self.min_delta
        return value < best - self.min_delta


def policy_from_config(config) -> Policy:
    """The run's policy; ValueError naming the field when a value is invalid."""
    section = config.get("early_stopping")
    if section is None:  # a config written before early stopping existed
        return Policy(metric="", patience=1, min_delta=0.0)
    metric = section.metric
    if metric and metric != TRAINER_METRIC and metric not in EVALUATOR_METRICS:
        raise ValueError(f"config.early_stopping.metric={metric!r} is not one of "
                         f"{', '.join([TRAINER_METRIC, *EVALUATOR_METRICS])} (or '' for off)")
    if not isinstance(section.patience, int) or section.patience < 1:
        raise ValueError(f"config.early_stopping.patience must be an integer >= 1, got "
                         f"{section.patience!r}")
    if not section.min_delta >= 0:
        raise ValueError(f"config.early_stopping.min_delta must be >= 0, got "
                         f"{section.min_delta!r}")
    return Policy(metric=metric, patience=section.patience, min_delta=float(section.min_delta))


def decide(rows: list[dict], policy: Policy) -> dict | None:
    """The stop record when the last `patience` rows (in step order) did not improve on
    the best before them; None to go on. Rows without the metric are ignored."""
    best, best_step, since = None, None, 0
    for row in sorted((r for r in rows if policy.metric in r), key=lambda r: r["step"]):
        if policy.improves(row[policy.metric], best):
            best, best_step, since = row[policy.metric], row["step"], 0
        else:
            since += 1
        if since >= policy.patience:
            return {"metric": policy.metric, "best": best, "best_step": best_step,
                    "step": row["step"], "patience": policy.patience,
                    "min_delta": policy.min_delta,
                    "reason": (f"{policy.metric} did not improve by more than "
                               f"{policy.min_delta:g} in {policy.patience} evaluation(s) "
                               f"after step {best_step} ({best:.4f})")}
    return None


def marker_path(workdir: str) -> str:
    return os.path.join(workdir, STOP_FILE)


def read_marker(workdir: str) -> dict | None:
    """The stop record, or None. An unreadable marker still stops (the file is the
    signal); its text then stands in as the reason."""
    path = marker_path(workdir)
    try:
        text = shared_files.read_text(path)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        record["reason"]
        return record
    except (ValueError, KeyError, TypeError):
        return {"reason": f"{path} exists ({text.strip()[:200]!r})"}


def write_marker(workdir: str, record: dict, *, by: str) -> bool:
    """Writes the marker unless one exists; True when this call wrote it."""
    if read_marker(workdir) is not None:
        return False
    shared_files.write_text_atomically(marker_path(workdir),
                                       json.dumps({**record, "by": by}, indent=2,
                                                  sort_keys=True) + "\n")
    return True
