"""Faults a preprocessed data dir meets in the field, injected on purpose for tests.

Shards are TFRecord files: per record an 8-byte little-endian length, a 4-byte CRC of
it, the data, a 4-byte CRC of the data. Writing metadata's per-shard list here keeps the
tests independent of when the preprocess job started recording it.
"""

import glob
import hashlib
import json
import os
import struct

import tensorflow as tf

from pipeline import features

HEADER_BYTES, FOOTER_BYTES = 12, 4


def edit_metadata(data_dir: str, edit) -> dict:
    """Applies `edit(metadata)` to metadata.json in place; returns the new metadata."""
    path = os.path.join(data_dir, features.METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    edit(metadata)
    with open(path, "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata


def count_records(path: str) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(path))


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def record_shards(data_dir: str) -> dict:
    """Writes splits.<split>.shards (file name, record count and sha256 of every shard), as
    the preprocess job records them."""
    def add(metadata):
        for split, counts in metadata["splits"].items():
            paths = sorted(glob.glob(os.path.join(data_dir, features.shard_pattern(split))))
            counts["shards"] = [{"file": os.path.basename(p), "records": count_records(p),
                                 "sha256": sha256(p)} for p in paths]
    return edit_metadata(data_dir, add)


def record_offsets(path: str) -> list[int]:
    """Byte offset of every record of a TFRecord file."""
    with open(path, "rb") as f:
        data = f.read()
    offsets, position = [], 0
    while position < len(data):
        offsets.append(position)
        (length,) = struct.unpack("<Q", data[position:position + 8])
        position += HEADER_BYTES + length + FOOTER_BYTES
    return offsets


def flip_byte(path: str, *, record: int) -> int:
    """Inverts a byte in the middle of one record's data (a bad disk block, a bad copy);
    returns the byte's offset."""
    offset = record_offsets(path)[record] + HEADER_BYTES + 2
    with open(path, "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0xFF]))
    return offset


def truncate_to_records(path: str, count: int) -> None:
    """Cuts a shard after `count` records: exactly on a record boundary, so every reader
    sees a shorter but valid file."""
    offsets = record_offsets(path) + [os.path.getsize(path)]
    with open(path, "r+b") as f:
        f.truncate(offsets[count])
