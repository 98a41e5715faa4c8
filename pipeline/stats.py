"""The preprocess job's counts and the metadata.json built from them. Imports no Beam.

Every stage reports what it read, wrote and dropped as a stats dict (tuple key -> int);
the dicts are summed (merge_counts) and turned into metadata.json (build_metadata), so
per split read == written + sum(dropped) and nothing disappears without a count. Kept free
of Beam so the numbers can be checked, and metadata rebuilt, without a Beam install.
"""

import collections
import dataclasses
import json
import re
import time
from typing import Mapping, Optional, Sequence

from pipeline import features, sources
from pipeline import tokenizer as tokenizer_lib

# Drop reasons, in the order the checks run (a pair is counted under the first that applies).
# Readers add their own skip reasons (sources.READER_SKIP_REASONS), counted the same way.
MALFORMED = sources.MALFORMED
LINE_TOO_LONG = sources.LINE_TOO_LONG
INVALID_UTF8 = "invalid_utf8"
EMPTY = "empty"
CONTROL_CHARS = "control_chars"
OVERLAPS_EVAL = "overlaps_eval"
TOO_LONG = "too_long"
LENGTH_RATIO = "length_ratio"
DUPLICATE = "duplicate"
CORE_REASONS = (MALFORMED, INVALID_UTF8, EMPTY, CONTROL_CHARS, OVERLAPS_EVAL, TOO_LONG,
                LENGTH_RATIO, DUPLICATE)
# Records kept in the dead-letter file, with their origin, line and (the start of) raw text.
DEAD_LETTER_REASONS = (INVALID_UTF8, MALFORMED, CONTROL_CHARS, LINE_TOO_LONG)

# The length-ratio filter only looks at pairs whose shorter side has at least this many
# subword tokens: "OK" -> "In Ordnung" is a fine pair, and ratios of tiny counts are noise.
RATIO_MIN_TOKENS = 3

DEAD_LETTER = "dead_letter"  # directory of the dead-letter file; key of its count
DEAD_LETTER_FILE = "dead_letter/dead_letter.jsonl"
HISTOGRAM_BUCKET_WIDTH = 8
MAX_BUCKETS = 12  # compiled shapes per step function; more buckets, less padding

# Stats keys are tuples: (split, "read"), (split, "written"), (split, "normalized"),
# (split, "dropped", reason), (split, "input_tokens"|"target_tokens"),
# (split, "len_inputs"|"len_targets"|"len_max", length), (DEAD_LETTER, "written"),
# (split, "origin_records", origin): records read from one explicit dev/test input.
READ, WRITTEN, NORMALIZED, DROPPED = "read", "written", "normalized", "dropped"
ORIGIN_RECORDS = "origin_records"


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def merge_counts(dicts) -> dict:
    """Sums stats dicts (tuple key -> count); also usable as a Beam CombineGlobally fn."""
    total = collections.Counter()
    for counts in dicts:
        total.update(counts)
    return dict(total)


def suggest_bucket_boundaries(length_counts: Mapping[int, int], *, max_length: int,
                              max_buckets: int = MAX_BUCKETS) -> list:
    """Bucket upper bounds (inclusive) that minimise padding over the train lengths.

    A batch holds a fixed token budget, so the compute spent on a pair is its bucket's
    boundary: the boundaries minimise sum(count(length) * boundary(length)) with at most
    `max_buckets` buckets (dynamic programming over the candidate boundaries, which are
    the lengths rounded up by `features.boundary_granularity` and capped at max_length).
    `length_counts` maps max(len(inputs), len(targets)) to its number of pairs.
    """
    counts = collections.Counter()
    for length, count in length_counts.items():
        step = features.boundary_granularity(length)
        counts[min(max_length, -(-length // step) * step)] += count
    if not counts:
        return [min(8, max_length)]
    candidates = sorted(counts)
    prefix = [0]
    for boundary in candidates:
        prefix.append(prefix[-1] + counts[boundary])
    size = len(candidates)
    # cost[j], choice[k][j]: the cheapest cover of candidates[:j + 1] by k buckets whose
    # last boundary is candidates[j], and where the bucket before it ends.
    cost = [candidates[j] * prefix[j + 1] for j in range(size)]
    choices = [[-1] * size]
    for _ in range(1, min(max_buckets, size)):
        new_cost, choice = list(cost), [-1] * size
        for j in range(size):
            for i in range(j):
                value = cost[i] + candidates[j] * (prefix[j + 1] - prefix[i + 1])
                if value < new_cost[j]:
                    new_cost[j], choice[j] = value, i
        cost = new_cost
        choices.append(choice)
    boundaries, j = [], size - 1
    for level in range(len(choices) - 1, -1, -1):
        if j < 0:
            break
        if level and choices[level][j] == -1:
            continue  # fewer buckets were as cheap: the cover of the level below stands
        boundaries.append(candidates[j])
        j = choices[level][j]
    return sorted(boundaries)


def length_histogram(stats: Mapping, split: str, *, max_length: int) -> dict:
    """Counts of input and target lengths (with EOS) in buckets of HISTOGRAM_BUCKET_WIDTH."""
    width = HISTOGRAM_BUCKET_WIDTH
    bounds = [min(b, max_length) for b in range(width, max_length + width, width)]
    histogram = {"bucket_upper_bounds": bounds}
    for side, key in (("inputs", "len_inputs"), ("targets", "len_targets")):
        buckets = [0] * len(bounds)
        for stat_key, count in stats.items():
            if stat_key[0] == split and stat_key[1] == key:
                buckets[min(max(stat_key[2] - 1, 0) // width, len(bounds) - 1)] += count
        histogram[side] = buckets
    return histogram


def split_counts(stats: Mapping, split: str, *, num_shards: int,
                 shards: Sequence[Mapping] = ()) -> dict:
    """The splits.<split> block of metadata.json.

    `shards` are the shard records of this split ({"file", "records", "sha256"}), which
    the trainer and evaluator check the directory against before reading it.
    """
    dropped = {reason: 0 for reason in CORE_REASONS}
    for key, count in stats.items():
        if key[0] == split and key[1] == DROPPED:
            dropped[key[2]] = dropped.get(key[2], 0) + count
    return {
        "read": stats.get((split, READ), 0),
        "written": stats.get((split, WRITTEN), 0),
        "dropped": dropped,
        "normalized_whitespace": stats.get((split, NORMALIZED), 0),
        "input_tokens": stats.get((split, "input_tokens"), 0),
        "target_tokens": stats.get((split, "target_tokens"), 0),
        "num_shards": num_shards,
        "files": shard_name(split, 0, num_shards).replace("00000-of", "?????-of"),
        "shards": sorted(({"file": shard["file"], "records": shard["records"],
                           "sha256": shard["sha256"]} for shard in shards),
                         key=lambda shard: shard["file"]),
    }


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Everything metadata.json records that is known before the pipeline runs."""
    output_dir: str
    num_shards: Mapping[str, int]
    max_length: int
    max_length_ratio: float
    sources: Mapping[str, list]
    split_fractions: Optional[Mapping[str, float]] = None
    # What was asked for: settings, input identities and their fingerprint (preprocess.py
    # compares it with a rerun's to tell a retry of a finished run from a different job).
    request: Optional[Mapping] = None
    # split -> the inputs of an explicit dev/test split, in order (none when carved out of
    # train): evaluation writes its outputs in this order.
    eval_origins: Optional[Mapping[str, list]] = None


def split_origins(stats: Mapping, split: str, *, settings: OutputSettings) -> list:
    """splits.<split>.origins: the split's own inputs in order, each with its record count
    (lines or entries, kept or dropped). Empty for a split carved out of train: its
    examples are some of train's lines, ordered by file and line."""
    return [{"file": origin, "records": stats.get((split, ORIGIN_RECORDS, origin), 0)}
            for origin in (settings.eval_origins or {}).get(split, ())]


def build_metadata(*, stats: Mapping, tokenizer: dict, settings: OutputSettings,
                   shards: Sequence[Mapping] = ()) -> dict:
    """metadata.json: the contract the trainer and evaluator read (see README).

    `shards` holds one record per shard file: {"split", "file", "records", "sha256"}.
    """
    kind = tokenizer_lib.kind_of(tokenizer["source_model"])
    source_file, target_file = tokenizer_lib.model_file_names(tokenizer["shared"], kind)
    sides, loaded = {}, {}
    for side, file_name, model in (("source", source_file, tokenizer["source_model"]),
                                   ("target", target_file, tokenizer["target_model"])):
        if model not in loaded:
            loaded[model] = tokenizer_lib.Tokenizer(model)
        sides[side] = {"path": file_name, "sha256": loaded[model].sha256,
                       "vocab_size": loaded[model].vocab_size}
    if tokenizer["shared"]:
        fingerprint = sides["source"]["sha256"]
    else:  # checkpoints pin this one value
        fingerprint = tokenizer_lib.pair_fingerprint(sides["source"]["sha256"],
                                                     sides["target"]["sha256"])
    splits = sorted(settings.num_shards, key=features.SPLITS.index)
    max_lengths = {key[2]: count for key, count in stats.items()
                   if key[0] == "train" and key[1] == "len_max"}
    metadata = {
        "format_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "splits": {split: split_counts(
            stats, split, num_shards=settings.num_shards[split],
            shards=[shard for shard in shards if shard["split"] == split])
            for split in splits},
        "tokenizer": {
            "path": sides["source"]["path"],
            "sha256": fingerprint,
            "kind": kind,
            "model_type": tokenizer["model_type"],
            "shared": tokenizer["shared"],
            "trained": tokenizer["trained"],
            "requested_vocab_size": tokenizer["requested_vocab_size"],
            "sample_pairs": tokenizer["sample_pairs"],
            "given_paths": tokenizer["given_paths"],
            "source": sides["source"],
            "target": sides["target"],
        },
        "vocab_size": max(sides["source"]["vocab_size"], sides["target"]["vocab_size"]),
        "source_vocab_size": sides["source"]["vocab_size"],
        "target_vocab_size": sides["target"]["vocab_size"],
        "pad_id": features.PAD_ID,
        "eos_id": features.EOS_ID,
        "unk_id": features.UNK_ID,
        "bos_id": features.BOS_ID,
        "max_length": settings.max_length,
        "max_length_ratio": settings.max_length_ratio,
        "ratio_min_tokens": RATIO_MIN_TOKENS,
        "length_histogram": {split: length_histogram(stats, split,
                                                     max_length=settings.max_length)
                             for split in splits},
        "bucket_boundaries": suggest_bucket_boundaries(max_lengths,
                                                       max_length=settings.max_length),
        "num_shards": dict(settings.num_shards),
        "sources": {split: list(specs) for split, specs in settings.sources.items()},
        "split_fractions": dict(settings.split_fractions or {}) or None,
        "dead_letter": {"path": DEAD_LETTER_FILE,
                        "count": stats.get((DEAD_LETTER, WRITTEN), 0)},
    }
    for split in splits:
        if split != "train" and settings.eval_origins is not None:
            metadata["splits"][split]["origins"] = split_origins(stats, split,
                                                                 settings=settings)
    if settings.request is not None:
        metadata["request"] = dict(settings.request)
    return metadata


def metadata_json(metadata: dict) -> str:
    """Indented JSON with lists of numbers on one line (histograms stay readable)."""
    text = json.dumps(metadata, indent=2, sort_keys=True)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)).strip() + "]",
                            text) + "\n"


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.]+,?\s*)+)\]")
