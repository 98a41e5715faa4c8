"""pipeline/wordpiece.py: learning, lossless round trips, equal ids in Python, in Beam and in
the exported graph, and clear errors for files that are not vocabularies."""

import glob
import json
import os

import keras
import pytest
import tensorflow as tf
from absl import flags

import models
from launch import export_lib
from models import decoding
from pipeline import features, preprocess, wordpiece
from pipeline import tokenizer as tokenizer_lib

TEXTS = ["Hello, world!", "The cat's hat — isn't it? 3.14 m/s", "p i p e l i n e",
         "Ünïcödé text (with brackets) and  doubled   spaces", "Datei öffnen: jetzt.",
         "HELLO world, hello World", "a , b ; c", "e-mail@example.org #tag 50%"]


@pytest.fixture(scope="module")
def vocabulary():
    return tokenizer_lib.train_model(TEXTS * 20, vocab_size=150, model_type="wordpiece")


def normalized(text):
    return " ".join(text.split())


def test_the_vocabulary_file_starts_with_the_special_tokens_at_their_ids(vocabulary):
    pieces = vocabulary.decode().splitlines()
    assert pieces[features.PAD_ID] == "<pad>" and pieces[features.EOS_ID] == "</s>"
    assert pieces[features.UNK_ID] == "<unk>" and pieces[features.BOS_ID] == "<s>"
    assert len(pieces) == len(set(pieces))
    # every character stays (with its ## form), so the size is a soft limit, as SentencePiece's
    assert {"!", "##!", "Ü", "##ö"} <= set(pieces) and len(pieces) < 150 * 1.1
    assert any(piece.startswith("##") and len(piece) > 2 for piece in pieces)
    assert tokenizer_lib.kind_of(vocabulary) == "wordpiece"
    assert tokenizer_lib.model_type_of(vocabulary) == "wordpiece"


def test_text_round_trips_with_case_punctuation_and_spacing_kept(vocabulary):
    tokenizer = tokenizer_lib.Tokenizer(vocabulary)
    graph = tokenizer_lib.tf_text_tokenizer(vocabulary)
    graph_ids = graph.tokenize(tf.constant(TEXTS))
    for text, ids, in_graph in zip(TEXTS, tokenizer.encode_batch(TEXTS), graph_ids.to_list()):
        assert ids == in_graph + [features.EOS_ID]
        assert tokenizer.detokenize(ids) == normalized(text)
    assert [t.decode() for t in graph.detokenize(graph_ids).numpy()] == list(
        map(normalized, TEXTS))


def test_a_word_with_an_unknown_character_becomes_one_unk(vocabulary):
    tokenizer = tokenizer_lib.Tokenizer(vocabulary)
    ids = tokenizer.encode("Hello Zürich!")
    assert ids.count(features.UNK_ID) == 1 and ids[-1] == features.EOS_ID
    assert tokenizer.detokenize(ids) == "Hello⁇!"


def test_pieces_keep_the_space_marker_and_suffixes_their_prefix(vocabulary):
    processor = tokenizer_lib.load_processor(vocabulary)
    pieces = [processor.id_to_piece(i) for i in processor.encode("Hello, world")]
    assert "".join(p.removeprefix("##") for p in pieces) == "Hello,▁world"
    words = wordpiece.split_words(tf.constant(["a , b", "x"])).to_list()
    assert words == [[b"a", "▁,".encode(), "▁b".encode()], [b"x"]]


@pytest.mark.parametrize("content, reason", [
    (b"hello\nworld\n", "bad.vocab is neither a SentencePiece model .* nor a WordPiece"),
    (wordpiece.HEADER + b"a\nb\na\n", "repeated pieces"),
    (wordpiece.HEADER + b"a\n\nb\n", "empty or repeated pieces: ..'"),
    (wordpiece.HEADER + b"\xff\n", "not UTF-8"),
])
def test_a_file_that_is_not_a_vocabulary_is_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.vocab"
    path.write_bytes(content)
    with pytest.raises(tokenizer_lib.TokenizerError, match=reason):
        tokenizer_lib.load_processor(str(path))


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """`s2s-preprocess --tokenizer=wordpiece` on a small corpus with a test split."""
    root = tmp_path_factory.mktemp("wordpiece")
    pairs = [(f"{verb} the {item}, now!", f"{item.title()} jetzt {german}.")
             for verb, german in [("Open", "öffnen"), ("close", "schließen"), ("Copy", "kopieren")]
             for item in ["file", "folder", "window", "message", "printer", "account"]]
    (root / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs[:15]))
    (root / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs[15:]))
    output = root / "data"
    flag_values = flags.FlagValues()
    preprocess.define_flags(flag_values)
    argv = preprocess.parse_flags(
        ["s2s-preprocess", f"--train=tsv:{root}/train.tsv", f"--test=tsv:{root}/test.tsv",
         f"--output_dir={output}", "--vocab_size=200", "--tokenizer=wordpiece",
         "--num_shards=1"], flag_values)
    preprocess.main(argv, flag_values)
    return str(output), json.load(open(output / features.METADATA_FILE))


def read_examples(output_dir, split):
    files = sorted(glob.glob(os.path.join(output_dir, features.shard_pattern(split))))
    return [{k: v.numpy() for k, v in example.items()} for example in
            tf.data.TFRecordDataset(files).map(features.parse_example)]


def test_the_beam_job_writes_the_in_graph_tokenizers_ids(preprocessed):
    output_dir, metadata = preprocessed
    info = metadata["tokenizer"]
    assert (info["path"], info["kind"], info["model_type"]) == (
        "wordpiece.vocab", "wordpiece", "wordpiece")
    vocabulary = open(os.path.join(output_dir, "wordpiece.vocab"), "rb").read()
    assert info["sha256"] == tokenizer_lib.sha256_of_bytes(vocabulary)
    graph = tokenizer_lib.tf_text_tokenizer(vocabulary)
    examples = read_examples(output_dir, "train") + read_examples(output_dir, "test")
    assert len(examples) == 18
    for example in examples:
        for ids, text in ((features.INPUTS, features.INPUTS_TEXT),
                          (features.TARGETS, features.TARGETS_TEXT)):
            in_graph = graph.tokenize(tf.constant([example[text]])).to_list()[0]
            assert example[ids].tolist() == in_graph + [features.EOS_ID]
            assert graph.detokenize(tf.constant([in_graph])).numpy()[0] == example[text]


def test_a_given_wordpiece_vocabulary_is_reused_with_the_same_ids(preprocessed, tmp_path):
    output_dir, metadata = preprocessed
    train = tmp_path / "train.tsv"
    train.write_text("Open the file, now!\tFile jetzt öffnen.\n")
    options = preprocess.pipeline_options_from_argv([])
    again = preprocess.preprocess(
        pipeline_options=options, output_dir=str(tmp_path / "out"), train=[f"tsv:{train}"],
        tokenizer_model=os.path.join(output_dir, "wordpiece.vocab"), num_shards=1)
    assert again["tokenizer"]["sha256"] == metadata["tokenizer"]["sha256"]
    assert again["tokenizer"]["trained"] is False and again["tokenizer"]["kind"] == "wordpiece"
    reused = read_examples(str(tmp_path / "out"), "train")[0]
    first = {e[features.ID]: e for e in read_examples(output_dir, "train")}
    assert reused[features.INPUTS].tolist() == first[reused[features.ID]][
        features.INPUTS].tolist()


def test_the_saved_model_tokenizes_and_detokenizes_as_python_does(vocabulary, tmp_path):
    tokenizer = tokenizer_lib.Tokenizer(vocabulary)
    keras.utils.set_random_seed(0)
    model = models.build_model(
        dict(name="transformer", num_encoder_layers=1, num_decoder_layers=1, d_model=16,
             num_heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0),
        source_vocab_size=tokenizer.vocab_size, target_vocab_size=tokenizer.vocab_size,
        pad_id=features.PAD_ID, eos_id=features.EOS_ID, bos_id=features.BOS_ID)
    search = dict(beam_size=2, alpha=0.6, length_ratio=1.5, length_offset=4)
    export_lib.save_translator(model, saved_model_dir=str(tmp_path / "model"),
                               source_model=vocabulary, target_model=vocabulary,
                               max_input_length=64, max_decode_length=32, **search)
    translate = export_lib.load_translator(str(tmp_path / "model"))
    texts = TEXTS[:3]
    outputs = translate(inputs=tf.constant(texts))["translations"].numpy()
    for text, output in zip(texts, outputs):
        tokens, _ = decoding.length_bounded_beam_search(
            model, tf.constant([tokenizer.encode(text)]), beam_size=2, alpha=0.6, ratio=1.5,
            offset=4, cap=32)
        assert output.decode() == tokenizer.detokenize(tokens[0].numpy())
