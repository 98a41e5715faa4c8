"""How work travels between the preprocess stages: batches as one bytes value, counts as
Beam counters.

Work moves through the pipeline in batches (lists of plain tuples) rather than one pair per
element: DirectRunner and Dataflow pay a fixed cost per element and per DoFn call, and
SentencePiece encodes a list of texts far faster than a Python loop.
"""

import pickle
from typing import Mapping

import apache_beam as beam

from pipeline import stats as stats_lib

METRICS_NAMESPACE = "s2s_preprocess"
PROGRESS_EVERY = 100_000


def pack(batch: list) -> bytes:
    """A batch as one bytes value for a shuffle.

    Beam's generic coder dispatches on the type of every field of every tuple; one pickle
    call does the whole list in C, which makes this job's shuffles much cheaper. Only our own DoFns
    read these values, on workers running the same Python version.
    """
    return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> list:
    return pickle.loads(blob)


def count_into_metrics(counts: Mapping) -> None:
    """Mirrors the read/written/dropped stats into Beam Metrics counters (visible live)."""
    for key, value in counts.items():
        if key[1] in (stats_lib.READ, stats_lib.WRITTEN, stats_lib.NORMALIZED):
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{key[0]}/{key[1]}").inc(value)
        elif key[1] == stats_lib.DROPPED:
            beam.metrics.Metrics.counter(
                METRICS_NAMESPACE, f"{key[0]}/dropped/{key[2]}").inc(value)
