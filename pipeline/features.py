"""The data contract between preprocess, train and evaluate.

Everything that writes or reads a TFRecord example goes through this module, so the
three jobs cannot drift apart on feature names, dtypes or special token ids.
"""

import hashlib

import tensorflow as tf

# Special ids. SentencePiece models trained by pipeline/tokenizer.py reserve exactly these,
# and the models take them as constructor arguments (models/ imports nothing internal).
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3  # decoder start token; never appears inside `targets`

INPUTS = "inputs"
TARGETS = "targets"
ID = "id"
INPUTS_TEXT = "inputs_text"
TARGETS_TEXT = "targets_text"

FEATURE_SPEC = {
    INPUTS: tf.io.RaggedFeature(tf.int64),
    TARGETS: tf.io.RaggedFeature(tf.int64),
    ID: tf.io.FixedLenFeature([], tf.string),
    INPUTS_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    TARGETS_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
}

METADATA_FILE = "metadata.json"
COMPLETED_FILE = "_COMPLETED"
SPLITS = ("train", "dev", "test")


def fingerprint(source: str, target: str) -> str:
    """Stable id of a raw pair: the same on every worker, process and Python version."""
    digest = hashlib.sha256()
    digest.update(source.encode("utf-8"))
    digest.update(b"\t")
    digest.update(target.encode("utf-8"))
    return digest.hexdigest()[:32]


def shard_pattern(split: str) -> str:
    """Glob matching every TFRecord shard of one split."""
    return f"{split}-?????-of-?????.tfrecord"


def shard_prefix(split: str) -> str:
    """Prefix handed to Beam's WriteToTFRecord; Beam appends -SSSSS-of-NNNNN.tfrecord."""
    return split


def encode_example(*, inputs, targets, pair_id: str, inputs_text: str = "",
                   targets_text: str = "") -> bytes:
    """Serializes one pair. `inputs`/`targets` are token ids that already end in EOS_ID."""
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    def text(value: str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    example = tf.train.Example(features=tf.train.Features(feature={
        INPUTS: ints(inputs),
        TARGETS: ints(targets),
        ID: text(pair_id),
        INPUTS_TEXT: text(inputs_text),
        TARGETS_TEXT: text(targets_text),
    }))
    return example.SerializeToString()


def parse_example(serialized):
    """Parses one serialized Example into a dict of tensors (int32 ids, ragged -> dense 1-D)."""
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    return {
        INPUTS: tf.cast(parsed[INPUTS], tf.int32),
        TARGETS: tf.cast(parsed[TARGETS], tf.int32),
        ID: parsed[ID],
        INPUTS_TEXT: parsed[INPUTS_TEXT],
        TARGETS_TEXT: parsed[TARGETS_TEXT],
    }


def decode_example(serialized: bytes) -> dict:
    """Eager, pure-Python parse for tests, audits and the evaluator's reference texts."""
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    return {
        INPUTS: list(feature[INPUTS].int64_list.value),
        TARGETS: list(feature[TARGETS].int64_list.value),
        ID: feature[ID].bytes_list.value[0].decode("utf-8"),
        INPUTS_TEXT: feature[INPUTS_TEXT].bytes_list.value[0].decode("utf-8"),
        TARGETS_TEXT: feature[TARGETS_TEXT].bytes_list.value[0].decode("utf-8"),
    }


# --- Fast, deterministic Example encoding (used by the Beam preprocess job) -----------------
# encode_example builds a tf.train.Example proto (~25 us per pair). The preprocess job writes
# millions of pairs, so it emits the same protobuf wire format directly: about 10x faster,
# needs no TensorFlow, and always orders the map entries the same way (byte-identical shards).
# tests/test_features.py checks that both encoders parse to identical features.

def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINTS = tuple(_varint(i) for i in range(1 << 14))  # every 1- and 2-byte varint


def _packed_ids(ids) -> bytes:
    if max(ids) < 0x80:
        return bytes(ids)
    table = _VARINTS
    return b"".join([table[i] if i < 16384 else _varint(i) for i in ids])


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _map_entry(key: bytes, feature: bytes) -> bytes:
    # Features.feature (field 1) map entry: key (field 1) and Feature value (field 2).
    return _length_delimited(b"\x0a", _length_delimited(b"\x0a", key)
                             + _length_delimited(b"\x12", feature))


def _int64_feature(ids) -> bytes:
    # Feature.int64_list (field 3) -> Int64List.value (field 1, packed varints).
    payload = _length_delimited(b"\x0a", _packed_ids(ids)) if len(ids) else b""
    return _length_delimited(b"\x1a", payload)


def _bytes_feature(value: bytes) -> bytes:
    # Feature.bytes_list (field 1) -> BytesList.value (field 1).
    return _length_delimited(b"\x0a", _length_delimited(b"\x0a", value))


def fast_encode_example(*, inputs, targets, pair_id: str, inputs_text: str = "",
                        targets_text: str = "") -> bytes:
    """Same contract as encode_example (non-negative ids ending in EOS_ID), no protobuf.

    Map entries are written in sorted key order, as deterministic protobuf serialization does.
    """
    features = (
        _map_entry(b"id", _bytes_feature(pair_id.encode("utf-8")))
        + _map_entry(b"inputs", _int64_feature(inputs))
        + _map_entry(b"inputs_text", _bytes_feature(inputs_text.encode("utf-8")))
        + _map_entry(b"targets", _int64_feature(targets))
        + _map_entry(b"targets_text", _bytes_feature(targets_text.encode("utf-8"))))
    return _length_delimited(b"\x0a", features)
