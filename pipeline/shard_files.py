"""The files the preprocess job writes: TFRecord shards, dead-letter pieces, small files.

Each file is written under a temporary name in its final directory and renamed into place,
so a reader never sees half a file and a retried bundle simply writes it again. Shards
are framed here rather than by tf.io.TFRecordWriter so that their sha256 is computed
while they are written (metadata.json records it) instead of by reading them back.
Imports no Beam.
"""

import collections
import hashlib
import json
import os
import struct
import uuid
from operator import itemgetter
from typing import Iterable, Iterator

import google_crc32c
import tensorflow as tf

from pipeline import external_sort, progress
from pipeline import stats as stats_lib

_WRITE_BYTES = 1 << 20  # records are joined into writes of about this size
PROGRESS_RECORDS = 4096  # written records are reported to the progress line in these steps
_UINT64 = struct.Struct("<Q")
_UINT32 = struct.Struct("<I")


def temp_name(path: str) -> str:
    """`.{name}.tmp-{32 hex}` beside `path` (preprocess.py recognises and cleans these)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")


def write_atomically(path: str, data: bytes) -> None:
    temp = temp_name(path)
    with tf.io.gfile.GFile(temp, "wb") as stream:
        stream.write(data)
    tf.io.gfile.rename(temp, path, overwrite=True)


def _masked_crc(data: bytes) -> int:
    """TFRecord's checksum: crc32c, rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _LengthHeaders(dict):
    """length -> its 12-byte TFRecord header (length + masked crc); lengths repeat a lot."""

    def __missing__(self, length: int) -> bytes:
        encoded = _UINT64.pack(length)
        header = self[length] = encoded + _UINT32.pack(_masked_crc(encoded))
        return header


_HEADERS = _LengthHeaders()


def write_tfrecords(path: str, records: Iterable[bytes]) -> tuple:
    """Writes a TFRecord file (same bytes as tf.io.TFRecordWriter); returns (count, sha256)."""
    digest, count = hashlib.sha256(), 0
    headers, pack_crc, crc = _HEADERS, _UINT32.pack, _masked_crc
    with tf.io.gfile.GFile(path, "wb") as stream:
        parts, size = [], 0
        for record in records:
            parts += (headers[len(record)], record, pack_crc(crc(record)))
            size += len(record)
            count += 1
            if size >= _WRITE_BYTES:
                block = b"".join(parts)
                digest.update(block)
                stream.write(block)
                parts, size = [], 0
        block = b"".join(parts)
        digest.update(block)
        stream.write(block)
    return count, digest.hexdigest()


def write_shard(path: str, *, split: str, batches: Iterable[tuple],
                sort_buffer_bytes: int = external_sort.SORT_BUFFER_BYTES) -> tuple:
    """Writes one shard sorted by pair id, duplicates dropped; returns (stats, sha256).

    `batches` are (items, approx_bytes) with items (pair_id, example, input_len,
    target_len, where); more than sort_buffer_bytes of them are sorted through local disk.
    A train pair (where None) is a duplicate of an equal pair; a dev/test pair only of
    itself at the same (origin, line), so every input line of an eval split keeps its row.
    """
    input_lengths, target_lengths = [], []
    duplicates = 0

    def unique_examples(items: Iterator) -> Iterator[bytes]:
        nonlocal duplicates
        previous = None
        for pair_id, example, input_len, target_len, where in items:
            if (pair_id, where) == previous:
                duplicates += 1
                continue
            previous = (pair_id, where)
            input_lengths.append(input_len)
            target_lengths.append(target_len)
            if len(input_lengths) % PROGRESS_RECORDS == 0:
                progress.note("written", PROGRESS_RECORDS)
            yield example

    temp = temp_name(path)
    with external_sort.sorted_items(batches, key=itemgetter(0, 4),
                                    budget_bytes=sort_buffer_bytes) as items:
        _, sha256 = write_tfrecords(temp, unique_examples(items))
    tf.io.gfile.rename(temp, path, overwrite=True)
    progress.note("written", len(input_lengths) % PROGRESS_RECORDS)
    counts = collections.Counter({(split, stats_lib.WRITTEN): len(input_lengths),
                                  (split, stats_lib.DROPPED, stats_lib.DUPLICATE): duplicates,
                                  (split, "input_tokens"): sum(input_lengths),
                                  (split, "target_tokens"): sum(target_lengths)})
    for name, lengths in (("len_inputs", input_lengths), ("len_targets", target_lengths),
                          ("len_max", map(max, input_lengths, target_lengths))):
        for length, count in collections.Counter(lengths).items():
            counts[(split, name, length)] = count
    return dict(counts), sha256


# --------------------------------------------------------------------------------------------
# Dead letters: rows (origin, number, split, reason, source repr, target repr, detail),
# written as sorted pieces (one per range of lines of a file), then joined into one file.

DEAD_LETTER_ORDER = itemgetter(0, 1, 2, 3)  # origin, line, split, reason


def dead_letter_json(row: tuple) -> str:
    origin, number, split, reason, source, target, detail = row
    return json.dumps({"source_file": origin, "line": number, "split": split,
                       "reason": reason, "source": source, "target": target,
                       "detail": detail}, ensure_ascii=False) + "\n"


def write_dead_letter_piece(output_dir: str, *, batches: Iterable[tuple],
                            sort_buffer_bytes: int = external_sort.SORT_BUFFER_BYTES) -> tuple:
    """Writes sorted rows as a temp-named piece of the dead-letter file; (path, rows).

    The piece is named like a temp file of dead_letter.jsonl, so a piece a failed attempt
    left behind is never published and is cleaned up like any other temp file.
    """
    final = os.path.join(output_dir, stats_lib.DEAD_LETTER_FILE)
    tf.io.gfile.makedirs(os.path.dirname(final))
    path, count = temp_name(final), 0
    with external_sort.sorted_items(batches, key=DEAD_LETTER_ORDER,
                                    budget_bytes=sort_buffer_bytes) as rows, \
            tf.io.gfile.GFile(path, "w") as stream:
        lines, size = [], 0
        for row in rows:
            line = dead_letter_json(row)
            lines.append(line)
            size += len(line)
            count += 1
            if size >= _WRITE_BYTES:
                stream.write("".join(lines))
                lines, size = [], 0
        stream.write("".join(lines))
    return path, count


def join_dead_letter_pieces(pieces: Iterable[tuple], *, output_dir: str) -> dict:
    """Concatenates the pieces, in (origin, first line) order, into the dead-letter file.

    `pieces` are (origin, line range index, path, rows). Streams, so memory stays small
    however many dead letters there are; deletes the pieces (a retry after that finds the
    joined file and returns the same count). Returns the stats dict.
    """
    pieces = sorted(pieces, key=itemgetter(0, 1))
    total = sum(piece[3] for piece in pieces)
    if not total:
        for piece in pieces:
            tf.io.gfile.remove(piece[2])
        return {}
    final = os.path.join(output_dir, stats_lib.DEAD_LETTER_FILE)
    if not tf.io.gfile.exists(pieces[0][2]) and tf.io.gfile.exists(final):
        return {(stats_lib.DEAD_LETTER, stats_lib.WRITTEN): total}  # a retry: already joined
    temp = temp_name(final)
    with tf.io.gfile.GFile(temp, "wb") as joined:
        for _, _, path, _ in pieces:
            with tf.io.gfile.GFile(path, "rb") as piece:
                while True:
                    block = piece.read(_WRITE_BYTES)
                    if not block:
                        break
                    joined.write(block)
    tf.io.gfile.rename(temp, final, overwrite=True)
    for piece in pieces:
        tf.io.gfile.remove(piece[2])
    return {(stats_lib.DEAD_LETTER, stats_lib.WRITTEN): total}
