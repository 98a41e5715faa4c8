"""SentencePiece training, loading and id parity with tensorflow-text."""

import functools
import hashlib
import io
import logging
import os
import tempfile

import pytest
import sentencepiece as spm
import tensorflow as tf

from pipeline import features, tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "der schnelle braune Fuchs springt über den faulen Hund",
    "Grüße aus Köln, schöne Straße",
    "open the file", "Datei öffnen", "save the file", "Datei speichern",
    "cannot open file %s", "kann Datei %s nicht öffnen",
    "Привет мир", "世界你好", "naïve café déjà vu",
] * 4
NON_ASCII = ["Grüße aus Köln", "Привет мир", "世界你好 🙂", "naïve café", "a\u00a0b",
             "ÄÖÜ ß"]


@functools.lru_cache(maxsize=None)
def tiny_model() -> bytes:
    """A ~100-piece unigram model shared by this file's tests (trained once)."""
    return tokenizer.train_sentencepiece(CORPUS, vocab_size=100, model_type="unigram")


@functools.lru_cache(maxsize=None)
def tiny_model_path() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="tiny_spm_"), "tiny.model")
    with open(path, "wb") as stream:
        stream.write(tiny_model())
    return path


def test_trained_model_uses_the_contract_special_ids():
    processor = tokenizer.load_sentencepiece(tiny_model())
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (
        features.PAD_ID, features.EOS_ID, features.UNK_ID, features.BOS_ID)
    assert tokenizer.model_type_of(tiny_model()) == "unigram"


def test_too_large_vocab_shrinks_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        model = tokenizer.train_sentencepiece(CORPUS[:3], vocab_size=5000, model_type="bpe")
    size = tokenizer.Tokenizer(model).vocab_size
    assert 4 < size < 5000
    assert "vocab_size 5000" in caplog.text
    assert tokenizer.model_type_of(model) == "bpe"


def test_too_small_vocab_fails_with_a_clear_message():
    with pytest.raises(tokenizer.TokenizerError, match=r"vocab_size 10 is too small.*>= \d+"):
        tokenizer.train_sentencepiece(CORPUS, vocab_size=10)


def test_no_sentences_is_a_clear_error():
    with pytest.raises(tokenizer.TokenizerError, match="no training sentences"):
        tokenizer.train_sentencepiece(["", ""], vocab_size=100)


@pytest.mark.parametrize("text", ["open the file", "cannot open file %s"] + NON_ASCII)
def test_ids_match_tensorflow_text(text):
    ours = tokenizer.Tokenizer(tiny_model())
    in_graph = tokenizer.tf_text_tokenizer(tiny_model())
    graph_ids = in_graph.tokenize(tf.constant([text])).to_list()[0]
    assert ours.encode(text) == graph_ids + [features.EOS_ID]
    assert ours.encode_batch([text, text])[1] == graph_ids + [features.EOS_ID]


def test_detokenize_stops_at_eos_and_skips_pad_and_bos():
    ours = tokenizer.Tokenizer(tiny_model())
    ids = ours.encode("Datei öffnen")
    assert ours.detokenize([features.BOS_ID] + ids + [features.PAD_ID, 42]) == "Datei öffnen"


def test_sha256_of_file_and_load_from_path():
    path = tiny_model_path()
    assert tokenizer.sha256_of_file(path) == hashlib.sha256(tiny_model()).hexdigest()
    assert tokenizer.Tokenizer.from_file(path).sha256 == tokenizer.sha256_of_file(path)
    assert tokenizer.load_sentencepiece(path).get_piece_size() == tokenizer.Tokenizer(
        tiny_model()).vocab_size


def test_missing_or_foreign_models_are_refused(tmp_path):
    with pytest.raises(tokenizer.TokenizerError, match="cannot read tokenizer model"):
        tokenizer.load_sentencepiece(str(tmp_path / "missing.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(tokenizer.TokenizerError, match="junk.model is neither a SentencePiece model"):
        tokenizer.load_sentencepiece(str(tmp_path / "junk.model"))
    foreign = io.BytesIO()  # SentencePiece defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=foreign,
                                   vocab_size=60, minloglevel=2)
    with pytest.raises(tokenizer.TokenizerError, match="special ids"):
        tokenizer.load_sentencepiece(foreign.getvalue())


def test_load_tokenizers_checks_recorded_sha256(tmp_path):
    (tmp_path / "spm.model").write_bytes(tiny_model())
    side = {"path": "spm.model", "sha256": hashlib.sha256(tiny_model()).hexdigest()}
    metadata = {"tokenizer": {"source": side, "target": side}}
    source, target = tokenizer.load_tokenizers(str(tmp_path), metadata)
    assert source is target
    metadata["tokenizer"]["target"] = dict(side, sha256="0" * 64)
    with pytest.raises(tokenizer.TokenizerError, match="differs"):
        tokenizer.load_tokenizers(str(tmp_path), metadata)
