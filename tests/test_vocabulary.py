"""Separate source/target vocabularies in both model families, and launch/vocabulary.py:
the layout from metadata.json, the embedding-sharing default, and old workdirs' configs."""

import json
import os
import re

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import models
from launch import vocabulary

PAD, EOS, BOS = 0, 1, 3
SOURCE_VOCAB, TARGET_VOCAB = 30, 20
FAMILIES = {
    "transformer": dict(name="transformer", num_encoder_layers=1, num_decoder_layers=1,
                        d_model=16, num_heads=2, ffn_dim=32, dropout=0.0,
                        attention_dropout=0.0),
    "lstm_attention": dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=1,
                           embed_dim=8, hidden_dim=12, dropout=0.0),
}
GOLDEN = os.path.join(os.path.dirname(__file__), "data", "shared_vocab_variables.json")
# The model configs whose variables the golden file lists, as written before separate
# vocabularies (share_embeddings=False then meant an untied output projection).
GOLDEN_CASES = {
    "transformer_tied": dict(name="transformer", num_encoder_layers=2, num_decoder_layers=2,
                             d_model=16, num_heads=2, ffn_dim=32, pre_norm=True),
    "transformer_post_norm_untied": dict(name="transformer", num_encoder_layers=1,
                                         num_decoder_layers=1, d_model=16, num_heads=2,
                                         ffn_dim=32, pre_norm=False, share_embeddings=False),
    "lstm_tied": dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=2,
                      embed_dim=8, hidden_dim=12),
    "lstm_gru_untied": dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=1,
                            embed_dim=8, hidden_dim=12, cell="gru", share_embeddings=False),
}


def unnumbered(path: str) -> str:
    """Keras numbers seed generators per process (seed_generator_33); checkpoints do not
    store the names."""
    return re.sub(r"seed_generator_\d+", "seed_generator", path)


def build(family, *, seed=0, source_vocab=SOURCE_VOCAB, target_vocab=TARGET_VOCAB,
          **overrides):
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(seed)
    return models.build_model(dict(FAMILIES[family], **overrides),
                              source_vocab_size=source_vocab, target_vocab_size=target_vocab,
                              pad_id=PAD, eos_id=EOS, bos_id=BOS)


def batch(*, source_ids, target_ids):
    return {"inputs": tf.constant(source_ids, tf.int32),
            "targets": tf.constant(target_ids, tf.int32)}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_shared_vocabulary_models_keep_their_variables_one_for_one(case):
    """Checkpoints hold variables by index: the same paths, shapes, order and (under one
    seed) initial values as before separate vocabularies, so old checkpoints restore."""
    expected = json.load(open(GOLDEN))[case]
    saved = vocabulary.upgrade_saved_config({"model": GOLDEN_CASES[case], "data": {}})
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    model = models.build_model(saved["model"], source_vocab_size=40, target_vocab_size=40,
                               pad_id=PAD, eos_id=EOS, bos_id=BOS)
    actual = [[v.path, list(v.shape), float(np.sum(np.abs(v.numpy().astype(np.float64))))]
              for v in model.variables]
    assert [[unnumbered(path), shape] for path, shape, _ in actual] == \
        [[unnumbered(path), shape] for path, shape, _ in expected]
    np.testing.assert_allclose([row[2] for row in actual], [row[2] for row in expected],  # 4 dp
                               rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tie", [True, False])
def test_separate_vocabularies_have_a_table_per_side_and_target_sized_logits(family, tie):
    model = build(family, share_embeddings=False, tie_output=tie)
    assert model.source_embedding.table.shape[0] == SOURCE_VOCAB
    assert model.target_embedding.table.shape[0] == TARGET_VOCAB
    assert (model.output_projection is None) == tie
    features = batch(source_ids=[[25, 29, 5, EOS]], target_ids=[[4, 19, EOS]])
    logits = model(features)
    assert logits.shape == (1, 3, TARGET_VOCAB)
    # Cached step-by-step decoding reads the target table too.
    cache = model.init_cache(model.encode(features["inputs"]), max_decode_length=4)
    step_logits, _ = model.decode_step(tf.constant([BOS]), cache)
    np.testing.assert_allclose(step_logits.numpy(), logits[:, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_source_only_piece_cannot_change_a_target_embedding_row(family):
    """Source id 7 and target id 7 are unrelated pieces: training on a source holding 7
    (and no target 7) moves source row 7 and leaves target row 7 exactly as it was. With
    one shared table, as before, the same batch moves that row."""
    features = batch(source_ids=[[7, 9, 7, EOS], [7, 12, EOS, PAD]],
                     target_ids=[[4, 5, 6, EOS], [8, EOS, PAD, PAD]])

    def one_adam_step(model):
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(model.trainable_variables)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(features, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return {v.path: tf.convert_to_tensor(g).numpy()
                for v, g in zip(model.trainable_variables, grads)}

    model = build(family, share_embeddings=False, tie_output=False)
    source_row, target_row = (model.source_embedding.table[7].numpy(),
                              model.target_embedding.table[7].numpy())
    grads = one_adam_step(model)
    assert not np.any(grads[model.target_embedding.table.path][7])
    np.testing.assert_array_equal(model.target_embedding.table[7].numpy(), target_row)
    assert np.abs(model.source_embedding.table[7].numpy() - source_row).max() > 1e-4

    shared = build(family, source_vocab=TARGET_VOCAB, share_embeddings=True, tie_output=False)
    row = shared.target_embedding.table[7].numpy()
    one_adam_step(shared)
    assert np.abs(shared.target_embedding.table[7].numpy() - row).max() > 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sharing_one_table_between_two_vocabulary_sizes_is_one_clear_error(family):
    with pytest.raises(ValueError) as error:
        build(family, share_embeddings=True)
    message = str(error.value)
    assert "\n" not in message
    assert "source has 30 pieces and the target 20" in message
    assert "share_embeddings=False" in message


def metadata(*, shared, source=30, target=20):
    return {"vocab_size": max(source, target), "source_vocab_size": source,
            "target_vocab_size": target, "tokenizer": {"shared": shared}}


def test_layout_of_reads_each_side_and_old_metadata():
    assert vocabulary.layout_of(metadata(shared=False)) == {
        "layout": "separate", "source_vocab_size": 30, "target_vocab_size": 20}
    assert vocabulary.layout_of(metadata(shared=True, source=50, target=50))["layout"] == "shared"
    old = {"vocab_size": 64, "tokenizer": {"sha256": "ab"}}  # before each side was recorded
    assert vocabulary.layout_of(old) == {
        "layout": "shared", "source_vocab_size": 64, "target_vocab_size": 64}


@pytest.mark.parametrize("layout,expected", [("shared", True), ("separate", False)])
def test_unset_share_embeddings_follows_the_data(layout, expected):
    model_config = ml_collections.ConfigDict(
        {"name": "transformer", "share_embeddings": ml_collections.config_dict.placeholder(bool)})
    model_config = model_config.copy_and_resolve_references()
    vocabulary.resolve_model_config(model_config, layout=layout)
    assert model_config.share_embeddings is expected and model_config.tie_output is True


def test_share_embeddings_true_on_separate_vocabularies_is_refused():
    model_config = ml_collections.ConfigDict({"name": "transformer", "share_embeddings": True})
    with pytest.raises(vocabulary.VocabularyError, match="--separate_vocabs"):
        vocabulary.resolve_model_config(model_config, layout="separate")
    explicit = ml_collections.ConfigDict({"share_embeddings": False, "tie_output": False})
    vocabulary.resolve_model_config(explicit, layout="shared")
    assert explicit.share_embeddings is False and explicit.tie_output is False


@pytest.mark.parametrize("shared", [True, False])
def test_an_old_config_json_upgrades_to_the_model_it_trained(shared):
    old = {"model": {"name": "transformer", "share_embeddings": shared},
           "data": {"vocab_size": 64, "pad_id": 0}, "train": {"num_steps": 10}}
    new = vocabulary.upgrade_saved_config(old)
    assert new["model"]["tie_output"] is shared  # untied exactly when not shared
    assert new["data"] == {"source_vocab_size": 64, "target_vocab_size": 64, "pad_id": 0,
                           "vocabulary_layout": None}
    assert new["train"] == old["train"] and "vocab_size" in old["data"]  # input untouched
    assert vocabulary.upgrade_saved_config(new) == new
    assert vocabulary.upgrade_saved_config({}) == {}
