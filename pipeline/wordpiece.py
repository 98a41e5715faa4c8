"""WordPiece beside SentencePiece: learn a vocabulary, tokenize through tensorflow-text.

BERT's pre-tokenizer lower-cases and splits at punctuation, so its detokenized text loses
case and spacing. This one keeps both: text is NFKC-normalized and its whitespace collapsed
(as SentencePiece does), words break at spaces and punctuation, and a word that followed a
space carries SentencePiece's "▁" marker. Joining the pieces and turning "▁" back into
spaces restores the text. What cannot round-trip is a word with a character outside the
vocabulary: it becomes one <unk>.

The vocabulary file is plain text, one piece per line, id = line number. Its first lines
are the data contract's special tokens, which is how a model file is told from a
SentencePiece one. The Beam job and the exported graph tokenize with the same
FastWordpieceTokenizer over the same pre-tokenizer (`split_words`), so their ids are equal.
"""

import collections
import logging
import time
from typing import Iterable

import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

RESERVED = ("<pad>", "</s>", "<unk>", "<s>")  # ids PAD, EOS, UNK, BOS of pipeline/features
UNK = RESERVED[2]
SUFFIX = "##"
SPACE = "▁"
UNK_TEXT = "⁇"  # what <unk> detokenizes to, as in SentencePiece
HEADER = ("\n".join(RESERVED) + "\n").encode("utf-8")
_BREAK = r"\s|[\p{P}\p{S}]"  # words end at spaces (dropped) and punctuation/symbols (kept)
_KEEP = r"[\p{P}\p{S}]"
_BATCH = 4096
SLACK = 0.05  # the learner settles for a size within this fraction below vocab_size


class VocabularyError(ValueError):
    """Bytes that are not a WordPiece vocabulary of this project."""


def is_wordpiece(model: bytes) -> bool:
    return bytes(model).startswith(HEADER)


def split_words(texts: tf.Tensor) -> tf.RaggedTensor:
    """[batch] string -> [batch, (words)] string, a word after a space marked with "▁"."""
    texts = tf_text.normalize_utf8(texts, "NFKC")
    texts = tf.strings.strip(tf.strings.regex_replace(texts, r"\s+", " "))
    words, starts, _ = tf_text.regex_split_with_offsets(texts, _BREAK, _KEEP)
    flat_starts = starts.flat_values
    row_texts = tf.gather(texts, words.value_rowids())
    byte_before = tf.strings.substr(row_texts, tf.maximum(flat_starts - 1, 0),
                                    tf.ones_like(flat_starts))
    after_space = tf.logical_and(flat_starts > 0, tf.equal(byte_before, " "))
    flat = words.flat_values
    return words.with_flat_values(tf.where(after_space, SPACE + flat, flat))


def learn_vocabulary(sentences: Iterable[str], *, vocab_size: int) -> bytes:
    """A vocabulary of at most `vocab_size` pieces learned by tensorflow-text's WordPiece
    learner from the words `split_words` makes of `sentences`; returns the file's bytes."""
    counts = collections.Counter()
    batch = []
    for sentence in sentences:
        batch.append(sentence)
        if len(batch) == _BATCH:
            counts.update(_words(batch))
            batch = []
    if batch:
        counts.update(_words(batch))
    # The learner is pure Python: minutes for the 44k distinct words of gettext en-de.
    logging.info("learning %d WordPiece pieces from %d distinct words", vocab_size,
                 len(counts))
    started = time.monotonic()
    vocab = learner.learn(counts, vocab_size, list(RESERVED), lower_thresh=1,
                          slack_ratio=SLACK, joiner=SUFFIX)
    logging.info("learned %d pieces in %.0f s", len(vocab), time.monotonic() - started)
    return ("\n".join(vocab) + "\n").encode("utf-8")


def _words(batch: list) -> list:
    return [word.decode("utf-8") for word in split_words(tf.constant(batch)).flat_values.numpy()]


def parse_vocabulary(model: bytes) -> list:
    """The pieces of a vocabulary file, checked: the special tokens first, no duplicates."""
    if not is_wordpiece(model):
        raise VocabularyError(f"a WordPiece vocabulary starts with the lines {list(RESERVED)}")
    try:
        pieces = bytes(model).decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise VocabularyError(f"WordPiece vocabulary is not UTF-8: {error}") from None
    if pieces[-1] == "":
        pieces.pop()
    duplicated = [piece for piece, n in collections.Counter(pieces).items() if n > 1]
    if duplicated or "" in pieces:
        raise VocabularyError(f"WordPiece vocabulary has empty or repeated pieces: "
                              f"{(duplicated or [''])[:5]}")
    return pieces


def surface_forms(pieces: list) -> list:
    """What each id contributes to detokenized text ("▁" still standing for a space)."""
    forms = [piece[len(SUFFIX):] if piece.startswith(SUFFIX) and piece != SUFFIX else piece
             for piece in pieces]
    forms[:len(RESERVED)] = ["", "", UNK_TEXT, ""]
    return forms


class GraphTokenizer(tf.Module):
    """In-graph WordPiece with the interface of tf_text.SentencepieceTokenizer that the
    trainer and export use: tokenize ([batch] string -> ragged int32 ids) and detokenize."""

    def __init__(self, model: bytes, name: str = "wordpiece"):
        super().__init__(name=name)
        pieces = parse_vocabulary(model)
        self._tokenizer = tf_text.FastWordpieceTokenizer(
            vocab=pieces, suffix_indicator=SUFFIX, unknown_token=UNK,
            token_out_type=tf.int32, no_pretokenization=True)
        self._surface = tf.constant(surface_forms(pieces))

    def tokenize(self, texts) -> tf.RaggedTensor:
        return self._tokenizer.tokenize(split_words(texts)).merge_dims(1, 2)

    def detokenize(self, ids) -> tf.Tensor:
        """[batch, (length)] ids -> [batch] string; special ids contribute nothing."""
        text = tf.strings.reduce_join(tf.gather(self._surface, ids), axis=-1)
        return tf.strings.regex_replace(text, SPACE, " ")


class WordpieceProcessor:
    """The part of SentencePieceProcessor's Python API this project uses, for WordPiece:
    the Beam job's encoder, the evaluator's detokenizer, vocabulary mapping."""

    def __init__(self, model: bytes):
        self._pieces = parse_vocabulary(model)
        self._surface = surface_forms(self._pieces)
        graph = GraphTokenizer(model)
        self._tokenize = tf.function(
            graph.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])

    def encode(self, texts, num_threads: int = 1):
        """A string -> its ids; a list of strings -> a list of id lists."""
        del num_threads  # the tokenizer op runs on TensorFlow's own threads
        if isinstance(texts, str):
            return self.encode([texts])[0]
        if not texts:
            return []
        return self._tokenize(tf.constant(list(texts))).to_list()

    def decode(self, ids) -> str:
        return "".join(self._surface[int(i)] for i in ids).replace(SPACE, " ")

    def get_piece_size(self) -> int:
        return len(self._pieces)

    def id_to_piece(self, index: int) -> str:
        return self._pieces[index]
