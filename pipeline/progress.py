"""Progress of the preprocess job in this worker process: pairs through each stage so far.

A local run shows a line every few seconds; on Dataflow each worker logs its own (the
job's Beam counters give the totals). Plain logging, as every job of the project uses: the
lines land in Cloud Logging intact, where a terminal progress bar would not. Imports no
Beam, so the stages' pure-Python work (shard_files.py) can report too.
"""

import collections
import logging
import threading
import time

EVERY_SECONDS = 5.0  # at most one progress line per this many seconds per process
STAGES = ("read", "cleaned", "tokenized", "written")  # the order pairs go through them

_lock = threading.Lock()  # DirectRunner runs bundles on several threads
_counts: collections.Counter = collections.Counter()
_state = {"started": None, "logged": None, "every": EVERY_SECONDS}


def note(stage: str, pairs: int) -> None:
    """Adds `pairs` that went through `stage`; logs the totals when a line is due."""
    with _lock:
        now = time.monotonic()
        if _state["started"] is None:
            _state["started"] = _state["logged"] = now
        _counts[stage] += pairs
        if now - _state["logged"] < _state["every"]:
            return
        _state["logged"] = now
        line = progress_line(_counts, stage=stage, seconds=now - _state["started"])
    logging.info("%s", line)


def progress_line(counts, *, stage: str, seconds: float) -> str:
    """`preprocess: read 120000, cleaned 119000, tokenized 80000, written 0 pairs; now
    tokenized (16000 pairs/s)`: the rate is the current stage's since the first pair."""
    totals = ", ".join(f"{name} {counts[name]}" for name in STAGES)
    return (f"preprocess: {totals} pairs; now {stage} "
            f"({counts[stage] / max(seconds, 1e-9):.0f} pairs/s)")


def reset() -> None:
    """Starts the counts afresh (a new job in this process), a line every EVERY_SECONDS."""
    with _lock:
        _counts.clear()
        _state.update(started=None, logged=None, every=EVERY_SECONDS)
