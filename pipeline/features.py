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
# Where a dev/test example came from (file or dataset, 1-based line or entry), so outputs can
# be written in the input's order. Train examples do not carry them; old ones lack them.
ORIGIN = "origin"
LINE = "line"

FEATURE_SPEC = {
    INPUTS: tf.io.RaggedFeature(tf.int64),
    TARGETS: tf.io.RaggedFeature(tf.int64),
    ID: tf.io.FixedLenFeature([], tf.string),
    INPUTS_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    TARGETS_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    ORIGIN: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    LINE: tf.io.FixedLenFeature([], tf.int64, default_value=0),
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
                   targets_text: str = "", origin: str = "", line: int = 0) -> bytes:
    """Serializes one pair. `inputs`/`targets` are token ids that already end in EOS_ID;
    `origin` and `line` are written only when `origin` is given."""
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    def text(value: str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    feature = {
        INPUTS: ints(inputs),
        TARGETS: ints(targets),
        ID: text(pair_id),
        INPUTS_TEXT: text(inputs_text),
        TARGETS_TEXT: text(targets_text),
    }
    if origin:
        feature[ORIGIN], feature[LINE] = text(origin), ints([line])
    example = tf.train.Example(features=tf.train.Features(feature=feature))
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
        ORIGIN: parsed[ORIGIN],
        LINE: parsed[LINE],
    }


def parse_token_batch(serialized):
    """Parses a batch of serialized Examples into ragged int32 "inputs" and "targets" only.

    What training reads: one vectorised parse per batch of records costs the input
    pipeline far less than a parse per record of every feature.
    """
    parsed = tf.io.parse_example(serialized, {key: FEATURE_SPEC[key] for key in (INPUTS, TARGETS)})
    return {key: tf.cast(parsed[key], tf.int32) for key in (INPUTS, TARGETS)}


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
        ORIGIN: (feature[ORIGIN].bytes_list.value[0].decode("utf-8")
                 if ORIGIN in feature else ""),
        LINE: feature[LINE].int64_list.value[0] if LINE in feature else 0,
    }


# --- Fast, deterministic Example encoding (used by the Beam preprocess job) -----------------
# encode_example builds a tf.train.Example proto (~13-25 us per pair). The preprocess job
# writes millions of pairs, so it emits the same protobuf wire format directly: about 4x faster,
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
    try:
        return b"".join(map(_VARINTS.__getitem__, ids))
    except IndexError:  # an id >= 16384: rare, so the general path may be slower
        return b"".join(map(_varint, ids))


class _EntryHeaders(dict):
    """Wire bytes of one map entry minus its payload, per payload length (cached).

    An entry is Features.feature (field 1) { key (1): name, value (2): Feature {
    bytes_list (1) or int64_list (3): { value (1): payload } } }; only the length
    prefixes depend on the payload, so they are built once per distinct length.
    """

    def __init__(self, key: str, feature_field: bytes):
        super().__init__()
        self._key = b"\x0a" + _varint(len(key)) + key.encode("utf-8")
        self._feature_field = feature_field

    def __missing__(self, length: int) -> bytes:
        inner = 1 + len(_varint(length)) + length  # BytesList / Int64List message
        feature = 1 + len(_varint(inner)) + inner
        entry = len(self._key) + 1 + len(_varint(feature)) + feature
        header = (b"\x0a" + _varint(entry) + self._key + b"\x12" + _varint(feature)
                  + self._feature_field + _varint(inner) + b"\x0a" + _varint(length))
        self[length] = header
        return header


_ID_HEADERS = _EntryHeaders(ID, b"\x0a")
_INPUTS_HEADERS = _EntryHeaders(INPUTS, b"\x1a")
_INPUTS_TEXT_HEADERS = _EntryHeaders(INPUTS_TEXT, b"\x0a")
_TARGETS_HEADERS = _EntryHeaders(TARGETS, b"\x1a")
_TARGETS_TEXT_HEADERS = _EntryHeaders(TARGETS_TEXT, b"\x0a")
_ORIGIN_HEADERS = _EntryHeaders(ORIGIN, b"\x0a")
_LINE_HEADERS = _EntryHeaders(LINE, b"\x1a")


def fast_encode_example(*, inputs, targets, pair_id: str, inputs_text: str = "",
                        targets_text: str = "", origin: str = "", line: int = 0) -> bytes:
    """Same contract as encode_example (non-negative ids ending in EOS_ID), no protobuf.

    Map entries are always written in the same order (id, inputs, inputs_text, targets,
    targets_text, then origin and line when given), so equal pairs give equal bytes in
    every process.
    """
    pair_id_bytes = pair_id.encode("utf-8")
    inputs_bytes = _packed_ids(inputs)
    inputs_text_bytes = inputs_text.encode("utf-8")
    targets_bytes = _packed_ids(targets)
    targets_text_bytes = targets_text.encode("utf-8")
    features = b"".join((
        _ID_HEADERS[len(pair_id_bytes)], pair_id_bytes,
        _INPUTS_HEADERS[len(inputs_bytes)], inputs_bytes,
        _INPUTS_TEXT_HEADERS[len(inputs_text_bytes)], inputs_text_bytes,
        _TARGETS_HEADERS[len(targets_bytes)], targets_bytes,
        _TARGETS_TEXT_HEADERS[len(targets_text_bytes)], targets_text_bytes))
    if origin:
        origin_bytes, line_bytes = origin.encode("utf-8"), _varint(line)
        features += b"".join((_ORIGIN_HEADERS[len(origin_bytes)], origin_bytes,
                              _LINE_HEADERS[len(line_bytes)], line_bytes))
    size = len(features)
    return b"\x0a" + (_VARINTS[size] if size < 16384 else _varint(size)) + features


def boundary_granularity(length: int) -> int:
    """Rounding step for a bucket boundary: fine for short sequences, where one extra
    position is a large share of the padding, coarse (8) for long, hardware-friendly ones."""
    return 2 if length <= 16 else 4 if length <= 32 else 8
