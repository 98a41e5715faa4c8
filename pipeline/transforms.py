"""The preprocess job's stages, each a named Beam PTransform; preprocess.py chains them:

    Read -> Clean -> [TrainTokenizer] -> Tokenize -> WriteShards -> SumStats -> WriteMetadata
            Clean -> WriteDeadLetters ----------------------------> SumStats

Every record that is not written is counted by reason, both in Beam Metrics counters and
in the stats each stage emits, which end up in metadata.json: per split,
read == written + sum(dropped). The work itself lives in cleaning.py, tokenizing.py and
shard_files.py; the counts and metadata in stats.py (no Beam).

Determinism: splits come from a hash of the source text, shards from a hash of the pair id,
and each shard is sorted by id before it is written, so the same input gives byte-identical
shards whatever the number of workers or the order in which bundles run.

Memory stays bounded however big the input: readers cut overlong lines, batches are
bounded in records and bytes, a shard or a range of dead letters larger than the sort
buffer is sorted through local disk, and dead letters are spread over keys.
"""

import hashlib
import logging
import os
import time
from typing import Mapping, Optional, Sequence

import apache_beam as beam

from pipeline import cleaning, features, progress, shard_files, tokenizing
from pipeline import tokenizer as tokenizer_lib
from pipeline.batches import PROGRESS_EVERY, pack, unpack
from pipeline.cleaning import CleanPairs, SplitFractions, split_of
from pipeline.external_sort import SORT_BUFFER_BYTES
from pipeline.stats import (CORE_REASONS, DEAD_LETTER, DEAD_LETTER_FILE, WRITTEN,
                            OutputSettings, build_metadata, merge_counts, metadata_json,
                            shard_name)
from pipeline.tokenizing import (KeepSmallest, TokenizePairs, TokenizerSettings,
                                 load_given_tokenizer, tokenizer_candidates, train_tokenizer)

# The stages, and the settings and output names the driver (preprocess.py) uses with them.
__all__ = ["ReadRecords", "CleanRecords", "TrainTokenizer", "TokenizeExamples", "WriteShards",
           "WriteDeadLetters", "SumStats", "WriteMetadata", "SplitFractions", "split_of",
           "TokenizerSettings", "OutputSettings", "CORE_REASONS", "DEAD_LETTER",
           "DEAD_LETTER_FILE", "shard_name"]

BATCH_BYTES = 8 << 20  # a batch also ends at about this much raw text: bounded elements
SHARDS = "shards"  # WriteShards' output of {"split", "shard", "file", "records", "sha256"}
_SHARD_KEYED = beam.typehints.KV[beam.typehints.Tuple[str, int], bytes]  # (split, shard), batch


# --------------------------------------------------------------------------------------------
# Read


class ReadBatches(beam.DoFn):
    """Reads one unit (file or dataset split) and emits packed lists of records.

    A batch ends at batch_size records or batch_bytes of raw text, whichever comes first.
    """

    def __init__(self, batch_size: int, batch_bytes: int = BATCH_BYTES):
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes

    def process(self, unit):
        started, count, batch, size = time.monotonic(), 0, [], 0
        name = getattr(unit, "path", None) or unit
        batch_size, batch_bytes = self._batch_size, self._batch_bytes
        for record in unit.read():
            batch.append(tuple(record))  # NamedTuple -> tuple: pickles without class lookups
            size += len(record[3]) + (len(record[4]) if record[4] else 0)
            if len(batch) >= batch_size or size >= batch_bytes:
                count += len(batch)
                progress.note("read", len(batch))
                yield pack(batch)
                batch, size = [], 0
        if batch:
            count += len(batch)
            progress.note("read", len(batch))
            yield pack(batch)
        elapsed = time.monotonic() - started
        log = logging.info if count >= PROGRESS_EVERY or elapsed > 10 else logging.debug
        log("read %d records from %s in %.1fs", count, name, elapsed)


class ReadRecords(beam.PTransform):
    """Read: one element per read unit, then Reshuffle so the batches spread over workers."""

    def __init__(self, units: Sequence, *, batch_size: int, batch_bytes: int = BATCH_BYTES):
        super().__init__()
        self._units = list(units)
        self._read = ReadBatches(batch_size, batch_bytes)

    def expand(self, pbegin):
        return (pbegin
                | "ListInputs" >> beam.Create(self._units)
                | "ReadBatches" >> beam.ParDo(self._read).with_output_types(bytes)
                | "Spread" >> beam.Reshuffle())


# --------------------------------------------------------------------------------------------
# Clean, tokenize


class CleanRecords(beam.PTransform):
    """Clean: decode, normalize, filter, carve splits (cleaning.CleanPairs).

    Returns {"pairs", "stats", "dead_letters", "eval_keys"}.
    """

    def __init__(self, *, fractions: Optional[SplitFractions], emit_eval_keys: bool):
        super().__init__()
        self._clean = CleanPairs(fractions=fractions, emit_eval_keys=emit_eval_keys)

    def expand(self, batches):
        outputs = (batches
                   | "CleanPairs" >> beam.ParDo(self._clean).with_output_types(list)
                   .with_outputs(cleaning.STATS, cleaning.DEAD_LETTERS, cleaning.EVAL_KEYS,
                                 main=cleaning.PAIRS))
        return {name: outputs[name] for name in (cleaning.PAIRS, cleaning.STATS,
                                                  cleaning.DEAD_LETTERS, cleaning.EVAL_KEYS)}


class TrainTokenizer(beam.PTransform):
    """TrainTokenizer: a bounded deterministic sample of clean train pairs -> the models.

    Output: one dict (tokenizing.tokenizer_info), used as a side input downstream.
    """

    def __init__(self, settings: TokenizerSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pairs):
        return (pairs
                | "SampleCandidates" >> beam.Map(tokenizer_candidates).with_output_types(list)
                | "Sample" >> beam.CombineGlobally(KeepSmallest(self._settings.sample_pairs))
                | "Train" >> beam.Map(train_tokenizer, settings=self._settings)
                .with_output_types(dict))


class TokenizeExamples(beam.PTransform):
    """Tokenize: encode, apply the token filters, key Examples by shard.

    `tokenizer` is TrainTokenizer's output (None: the settings name given model files);
    `eval_keys` is CleanRecords' eval_keys (None: no explicit dev/test to check against).
    Returns {"examples", "stats"}.
    """

    def __init__(self, *, max_length: int, max_length_ratio: float,
                 num_shards: Mapping[str, int], tokenizer_settings: TokenizerSettings,
                 tokenizer: Optional[beam.PCollection] = None,
                 eval_keys: Optional[beam.PCollection] = None):
        super().__init__()
        self._tokenize = TokenizePairs(max_length=max_length, max_length_ratio=max_length_ratio,
                                       num_shards=num_shards,
                                       tokenizer_settings=tokenizer_settings)
        self._side_inputs = {}
        if tokenizer is not None:
            self._side_inputs["tokenizer"] = beam.pvalue.AsSingleton(tokenizer)
        if eval_keys is not None:
            self._side_inputs["eval_keys"] = beam.pvalue.AsList(eval_keys)

    def expand(self, pairs):
        outputs = (pairs
                   | "TokenizePairs" >> beam.ParDo(self._tokenize, **self._side_inputs)
                   .with_output_types(_SHARD_KEYED).with_outputs(tokenizing.STATS,
                                                                 main=tokenizing.EXAMPLES))
        return {tokenizing.EXAMPLES: outputs[tokenizing.EXAMPLES],
                tokenizing.STATS: outputs[tokenizing.STATS]}


# --------------------------------------------------------------------------------------------
# Write


class WriteShardFile(beam.DoFn):
    """Writes one grouped shard; emits its stats and, tagged SHARDS, its shard record."""

    def __init__(self, *, output_dir: str, num_shards: Mapping[str, int],
                 sort_buffer_bytes: int = SORT_BUFFER_BYTES):
        self._output_dir = output_dir
        self._num_shards = dict(num_shards)
        self._sort_buffer_bytes = sort_buffer_bytes

    def process(self, element):
        (split, shard), groups = element
        name = shard_name(split, shard, self._num_shards[split])
        counts, sha256 = shard_files.write_shard(
            os.path.join(self._output_dir, name), split=split,
            batches=((unpack(blob), len(blob)) for blob in groups),
            sort_buffer_bytes=self._sort_buffer_bytes)
        yield counts
        yield beam.pvalue.TaggedOutput(SHARDS, {
            "split": split, "shard": shard, "file": name,
            "records": counts[(split, WRITTEN)], "sha256": sha256})


class WriteShards(beam.PTransform):
    """WriteShards: group Examples by shard, write each sorted by id, duplicates dropped.

    Returns {"stats", "shards"} (shard records for metadata.json).
    """

    def __init__(self, *, output_dir: str, num_shards: Mapping[str, int],
                 sort_buffer_bytes: int = SORT_BUFFER_BYTES):
        super().__init__()
        self._write = WriteShardFile(output_dir=output_dir, num_shards=num_shards,
                                     sort_buffer_bytes=sort_buffer_bytes)

    def expand(self, examples):
        outputs = (examples
                   | "GroupShards" >> beam.GroupByKey()
                   | "WriteShardFiles" >> beam.ParDo(self._write).with_output_types(dict)
                   .with_outputs(SHARDS, main="stats"))
        return {"stats": outputs.stats, SHARDS: outputs[SHARDS]}


class WriteDeadLetterPiece(beam.DoFn):
    """Writes the sorted dead letters of one (file, line range) key as a piece."""

    def __init__(self, *, output_dir: str, sort_buffer_bytes: int = SORT_BUFFER_BYTES):
        self._output_dir = output_dir
        self._sort_buffer_bytes = sort_buffer_bytes

    def process(self, element):
        (origin, line_range), groups = element
        path, rows = shard_files.write_dead_letter_piece(
            self._output_dir, batches=((unpack(blob), len(blob)) for blob in groups),
            sort_buffer_bytes=self._sort_buffer_bytes)
        yield origin, line_range, path, rows


class WriteDeadLetters(beam.PTransform):
    """WriteDeadLetters: pieces per file and line range, joined in order into one file.

    Output: one stats dict ({(DEAD_LETTER, "written"): rows}, or {} when there are none).
    """

    def __init__(self, *, output_dir: str, sort_buffer_bytes: int = SORT_BUFFER_BYTES):
        super().__init__()
        self._output_dir = output_dir
        self._write = WriteDeadLetterPiece(output_dir=output_dir,
                                           sort_buffer_bytes=sort_buffer_bytes)

    def expand(self, dead_letters):
        return (dead_letters
                | "GroupRanges" >> beam.GroupByKey()
                | "WritePieces" >> beam.ParDo(self._write)
                | "ListPieces" >> beam.combiners.ToList()
                | "JoinPieces" >> beam.Map(shard_files.join_dead_letter_pieces,
                                           output_dir=self._output_dir)
                .with_output_types(dict))


class SumStats(beam.PTransform):
    """SumStats: every stage's stats dicts summed into one (combined per bundle first)."""

    def expand(self, stats_collections):
        return (stats_collections
                | "Merge" >> beam.Flatten()
                | "Sum" >> beam.CombineGlobally(merge_counts))


# --------------------------------------------------------------------------------------------
# Metadata


class WriteMetadata(beam.PTransform):
    """WriteMetadata: empty shards, tokenizer model(s), metadata.json, _COMPLETED (last).

    Input: the summed stats (one dict). Output: the metadata dict.
    """

    def __init__(self, *, settings: OutputSettings, tokenizer_settings: TokenizerSettings,
                 shards: beam.PCollection, tokenizer: Optional[beam.PCollection] = None):
        super().__init__()
        self._settings = settings
        self._tokenizer_settings = tokenizer_settings
        self._side_inputs = {"shards": beam.pvalue.AsList(shards)}
        if tokenizer is not None:
            self._side_inputs["tokenizer"] = beam.pvalue.AsSingleton(tokenizer)

    def expand(self, stats):
        return (stats
                | "Write" >> beam.Map(write_outputs, settings=self._settings,
                                      tokenizer_settings=self._tokenizer_settings,
                                      **self._side_inputs)
                .with_output_types(dict))


def write_outputs(stats: dict, *, shards: list, settings: OutputSettings,
                  tokenizer_settings: TokenizerSettings, tokenizer: Optional[dict] = None) -> dict:
    """Writes empty shards, the tokenizer model(s), metadata.json, then _COMPLETED (last).

    `stats` are the summed stats, `shards` the records of the shards WriteShards wrote;
    `tokenizer` is the trained tokenizer side input (None means read the given model files).
    A shard that received no pairs is an empty file.
    """
    import tensorflow as tf
    shards = list(shards)
    written = {(shard["split"], shard["shard"]) for shard in shards}
    empty_sha256 = hashlib.sha256(b"").hexdigest()
    for split, count in settings.num_shards.items():
        for shard in range(count):
            if (split, shard) not in written:
                name = shard_name(split, shard, count)
                shard_files.write_atomically(os.path.join(settings.output_dir, name), b"")
                shards.append({"split": split, "shard": shard, "file": name, "records": 0,
                               "sha256": empty_sha256})
    if tokenizer is None:
        tokenizer = load_given_tokenizer((tokenizer_settings.source_model_path,
                                          tokenizer_settings.target_model_path),
                                         settings=tokenizer_settings)
    directory = settings.output_dir
    source_file, target_file = tokenizer_lib.model_file_names(
        tokenizer["shared"], tokenizer_lib.kind_of(tokenizer["source_model"]))
    for file_name, model in ((source_file, tokenizer["source_model"]),
                             (target_file, tokenizer["target_model"])):
        shard_files.write_atomically(os.path.join(directory, file_name), model)
    metadata = build_metadata(stats=stats, tokenizer=tokenizer, settings=settings,
                              shards=shards)
    shard_files.write_atomically(os.path.join(directory, features.METADATA_FILE),
                                 metadata_json(metadata).encode("utf-8"))
    with tf.io.gfile.GFile(os.path.join(directory, features.COMPLETED_FILE), "w") as stream:
        stream.write(metadata["created_at"] + "\n")
    return metadata
