"""Tokenizers: train, load, encode and decode with the contract's special ids.

SentencePiece (unigram or BPE) by default; WordPiece (pipeline/wordpiece.py) when asked. A
model is the bytes of its file, and its kind is read from them. One place owns the
settings so preprocess (Python, on Beam workers), the trainer and the evaluator
(tensorflow-text, in the graph) always produce identical ids. Imports no Beam.
"""

import hashlib
import io
import logging
import os
import re
from typing import Iterable

import sentencepiece as spm
import tensorflow as tf

from pipeline import features, wordpiece

SENTENCEPIECE, WORDPIECE = "sentencepiece", "wordpiece"
KINDS = (SENTENCEPIECE, WORDPIECE)
SENTENCEPIECE_TYPES = ("unigram", "bpe")
MODEL_TYPES = SENTENCEPIECE_TYPES + (WORDPIECE,)
SHARED_MODEL_FILE = "spm.model"
SOURCE_MODEL_FILE = "spm_source.model"
TARGET_MODEL_FILE = "spm_target.model"
# file names by kind: (shared, source, target)
MODEL_FILES = {SENTENCEPIECE: (SHARED_MODEL_FILE, SOURCE_MODEL_FILE, TARGET_MODEL_FILE),
               WORDPIECE: ("wordpiece.vocab", "wordpiece_source.vocab",
                           "wordpiece_target.vocab")}

_SPECIAL_IDS = dict(pad_id=features.PAD_ID, eos_id=features.EOS_ID, unk_id=features.UNK_ID,
                    bos_id=features.BOS_ID)
_TOO_FEW_CHARS = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class TokenizerError(ValueError):
    """The tokenizer cannot be trained or loaded as asked (message names the fix)."""


def train_model(sentences: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
                num_threads: int = 2) -> bytes:
    """A SentencePiece model of `model_type`, or a WordPiece vocabulary ("wordpiece")."""
    if model_type != WORDPIECE:
        return train_sentencepiece(sentences, vocab_size=vocab_size, model_type=model_type,
                                   num_threads=num_threads)
    sentences = [s for s in sentences if s]
    if not sentences:
        raise TokenizerError("no training sentences left after cleaning: cannot train a tokenizer")
    model = wordpiece.learn_vocabulary(sentences, vocab_size=vocab_size)
    actual = len(wordpiece.parse_vocabulary(model))
    if actual < (1 - wordpiece.SLACK) * vocab_size:  # the learner may stop that far below
        logging.warning("vocab_size %d is more than %d sentences support: learned %d pieces",
                        vocab_size, len(sentences), actual)
    return model


def train_sentencepiece(sentences: Iterable[str], *, vocab_size: int,
                        model_type: str = "unigram", num_threads: int = 2) -> bytes:
    """Trains a model in memory and returns its serialized bytes.

    The vocabulary size is a soft limit (hard_vocab_limit=false): a corpus too small for the
    requested size yields a smaller vocabulary (logged as a warning) instead of an error.
    A size smaller than the corpus's distinct characters fails with a TokenizerError.
    """
    if model_type not in SENTENCEPIECE_TYPES:
        raise TokenizerError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    sentences = [s for s in sentences if s]
    if not sentences:
        raise TokenizerError("no training sentences left after cleaning: cannot train a tokenizer")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
            model_type=model_type, hard_vocab_limit=False, num_threads=num_threads,
            minloglevel=2, **_SPECIAL_IDS)
    except RuntimeError as error:
        too_few = _TOO_FEW_CHARS.search(str(error))
        if too_few:
            raise TokenizerError(
                f"vocab_size {too_few.group(1)} is too small: the training text has "
                f"{int(too_few.group(2)) - 4} distinct characters plus 4 special ids; use "
                f"--vocab_size >= {too_few.group(2)}") from None
        raise TokenizerError(f"SentencePiece training failed: {error}") from None
    model = buffer.getvalue()
    actual = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if actual < vocab_size:
        logging.warning("vocab_size %d is more than %d sentences support: trained %d pieces",
                        vocab_size, len(sentences), actual)
    return model


def check_special_ids(processor: spm.SentencePieceProcessor, name: str) -> None:
    """Refuses a model whose special ids differ from the data contract (ids would be wrong)."""
    actual = dict(pad_id=processor.pad_id(), eos_id=processor.eos_id(),
                  unk_id=processor.unk_id(), bos_id=processor.bos_id())
    if actual != _SPECIAL_IDS:
        raise TokenizerError(f"{name}: special ids {actual} differ from the data contract "
                             f"{_SPECIAL_IDS}; train it with those ids")


def read_model_bytes(path: str) -> bytes:
    """Reads a .model file from a local or gs:// path, with a clear error if it is missing."""
    try:
        with tf.io.gfile.GFile(path, "rb") as stream:
            return stream.read()
    except tf.errors.OpError as error:
        raise TokenizerError(f"cannot read tokenizer model {path}: {error.message}") from None


def _model_and_name(path_or_bytes) -> tuple:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return bytes(path_or_bytes), "tokenizer model"
    return read_model_bytes(path_or_bytes), path_or_bytes


def load_sentencepiece(path_or_bytes) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor from a model path (local or gs://) or serialized bytes."""
    return _sentencepiece(*_model_and_name(path_or_bytes))


def _sentencepiece(model: bytes, name: str) -> spm.SentencePieceProcessor:
    try:
        processor = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError as error:
        raise TokenizerError(
            f"{name} is neither a SentencePiece model ({error}) nor a WordPiece vocabulary "
            f"(whose first lines are {' '.join(wordpiece.RESERVED)})") from None
    check_special_ids(processor, name)
    return processor


def kind_of(model: bytes) -> str:
    return WORDPIECE if wordpiece.is_wordpiece(model) else SENTENCEPIECE


def load_processor(path_or_bytes):
    """Python encoder/decoder of either kind: a SentencePieceProcessor, or a
    WordpieceProcessor with the same methods (encode, decode, id_to_piece, ...)."""
    model, name = _model_and_name(path_or_bytes)
    if kind_of(model) == SENTENCEPIECE:
        return _sentencepiece(model, name)
    try:
        return wordpiece.WordpieceProcessor(model)
    except wordpiece.VocabularyError as error:
        raise TokenizerError(f"{name}: {error}") from None


def tf_text_tokenizer(model_bytes: bytes, name: str | None = None):
    """The in-graph tokenizer (tensorflow-text) producing the same ids as `encode` minus EOS:
    tokenize([batch] string) -> ragged int32, detokenize(ids) -> [batch] string."""
    if kind_of(model_bytes) == WORDPIECE:
        return wordpiece.GraphTokenizer(model_bytes, name=name or "wordpiece")
    import tensorflow_text
    return tensorflow_text.SentencepieceTokenizer(model=model_bytes, out_type=tf.int32,
                                                  name=name)


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: str) -> str:
    """Hex sha256 of a file: how metadata.json and checkpoints pin the exact tokenizer."""
    return sha256_of_bytes(read_model_bytes(path))


def pair_fingerprint(source_sha256: str, target_sha256: str) -> str:
    """One value for a source/target model pair that changes when either model changes."""
    return sha256_of_bytes(f"{source_sha256}:{target_sha256}".encode("ascii"))


class Tokenizer:
    """A tokenizer model with the data contract applied: ids end in EOS_ID."""

    def __init__(self, model: bytes):
        self.model = bytes(model)
        self.processor = load_processor(self.model)
        self.sha256 = sha256_of_bytes(self.model)

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        return cls(read_model_bytes(path))

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list:
        """text -> subword ids + [EOS_ID]."""
        return self.processor.encode(text) + [features.EOS_ID]

    def encode_batch(self, texts: list, *, num_threads: int = 1) -> list:
        """Many texts at once through SentencePiece's C++ batch API (much faster than a loop)."""
        eos = [features.EOS_ID]
        return [ids + eos for ids in self.processor.encode(texts, num_threads=num_threads)]

    def detokenize(self, ids) -> str:
        """ids -> text, stopping at the first EOS_ID and ignoring PAD_ID and BOS_ID."""
        pieces = []
        for token in (int(i) for i in ids):
            if token == features.EOS_ID:
                break
            if token not in (features.PAD_ID, features.BOS_ID):
                pieces.append(token)
        return self.processor.decode(pieces)


def load_tokenizers(data_dir: str, metadata: dict) -> tuple:
    """(source, target) Tokenizers of a preprocess output dir; the same object when shared.

    `metadata` is the dict from metadata.json (e.g. pipeline.dataset.load_metadata). The
    files' sha256 must match the recorded ones, so a swapped model fails loudly.
    """
    info = metadata["tokenizer"]
    loaded = {}
    for side in ("source", "target"):
        path = os.path.join(data_dir, info[side]["path"])
        if path not in loaded:
            loaded[path] = Tokenizer.from_file(path)
        if loaded[path].sha256 != info[side]["sha256"]:
            raise TokenizerError(f"{path}: sha256 {loaded[path].sha256[:12]}... differs from "
                                 f"metadata.json's {info[side]['sha256'][:12]}...")
    return (loaded[os.path.join(data_dir, info["source"]["path"])],
            loaded[os.path.join(data_dir, info["target"]["path"])])


def model_file_names(shared: bool, kind: str = SENTENCEPIECE) -> tuple:
    """(source file, target file) names inside the output dir."""
    shared_file, source_file, target_file = MODEL_FILES[kind]
    if shared:
        return shared_file, shared_file
    return source_file, target_file


_MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def model_type_of(model: bytes) -> str:
    """The trainer's model type recorded inside a serialized model (for metadata.json).

    Reads ModelProto.trainer_spec (field 2) -> TrainerSpec.model_type (field 3) straight
    from the wire format: sentencepiece's bundled _pb2 module needs a newer protobuf runtime
    than TensorFlow allows. A WordPiece vocabulary is "wordpiece".
    """
    if kind_of(model) == WORDPIECE:
        return WORDPIECE
    spec = _find_field(model, 2)
    value = _find_field(spec, 3) if spec is not None else None
    return _MODEL_TYPE_NAMES.get(value if value is not None else 1, "unknown")


def _read_varint(data: bytes, pos: int) -> tuple:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _find_field(data: bytes, wanted: int):
    """First value of a top-level field: bytes for length-delimited, int for varint."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                value, pos = _read_varint(data, pos)
            elif wire_type == 2:
                size, pos = _read_varint(data, pos)
                value, pos = data[pos:pos + size], pos + size
            elif wire_type in (1, 5):
                value, pos = None, pos + (8 if wire_type == 1 else 4)
            else:
                return None
            if number == wanted:
                return value
    except IndexError:
        return None
    return None
