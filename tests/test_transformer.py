"""models/transformer.py and build_model: shapes, masking, caching, training, precision."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import models
from models import losses

VOCAB, PAD, EOS, BOS = 23, 0, 1, 3
TINY = dict(name="transformer", num_encoder_layers=2, num_decoder_layers=2, d_model=16,
            num_heads=2, ffn_dim=32, dropout=0.1, attention_dropout=0.1, pre_norm=True,
            share_embeddings=True)


def build(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return models.build_model(dict(TINY, **overrides), source_vocab_size=VOCAB,
                              target_vocab_size=VOCAB, pad_id=PAD, eos_id=EOS, bos_id=BOS)


def batch(seed=0, *, source_lengths=(5, 3), target_lengths=(6, 4), width=(5, 6)):
    """Random ids in 4..VOCAB-1, right-padded with PAD to `width` (source, target)."""
    rng = np.random.default_rng(seed)

    def ids(lengths, length):
        out = np.zeros([len(lengths), length], np.int32)
        for row, n in enumerate(lengths):
            out[row, :n] = rng.integers(4, VOCAB, n)
        return out

    return {"inputs": ids(source_lengths, width[0]), "targets": ids(target_lengths, width[1])}


@pytest.fixture
def policy():
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("share", [True, False])
def test_output_shape_dtype_and_weight_tying(pre_norm, share):
    model = build(pre_norm=pre_norm, share_embeddings=share)
    logits = model(batch(), training=True)
    assert logits.shape == (2, 6, VOCAB) and logits.dtype == tf.float32
    tables = [v for v in model.trainable_variables if v.shape == (VOCAB, 16)]
    assert len(tables) == (1 if share else 2)
    assert model.config.pre_norm is pre_norm and model.config.num_heads == 2


def test_padding_invariance():
    model = build()
    features = batch()
    padded = {k: np.pad(v, [[0, 0], [0, 3]]) for k, v in features.items()}
    logits = model(features).numpy()
    padded_logits = model(padded).numpy()
    real = features["targets"] != PAD
    np.testing.assert_allclose(padded_logits[:, :6][real], logits[real], atol=1e-5)
    # Sentence 1 has 3 real source tokens: its padding positions must not matter either.
    changed = dict(features, inputs=features["inputs"].copy())
    changed["inputs"][1, 3:] = PAD
    np.testing.assert_allclose(model(changed).numpy()[real], logits[real], atol=1e-6)


def test_causality():
    model = build()
    features = batch(target_lengths=(6, 6))
    logits = model(features).numpy()
    changed = dict(features, targets=features["targets"].copy())
    changed["targets"][:, 3] = (changed["targets"][:, 3] + 1 - 4) % (VOCAB - 4) + 4
    new_logits = model(changed).numpy()
    # Position t predicts targets[t] from targets[:t]: positions <= 3 cannot see the change.
    np.testing.assert_allclose(new_logits[:, :4], logits[:, :4], atol=1e-6)
    assert np.abs(new_logits[:, 4:] - logits[:, 4:]).max() > 1e-3


@pytest.mark.parametrize("pre_norm,share,tie", [(True, True, True), (False, False, False),
                                               (True, False, True)])
def test_cached_decoding_equals_teacher_forcing(pre_norm, share, tie):
    model = build(pre_norm=pre_norm, share_embeddings=share, tie_output=tie)
    features = batch(1)
    logits = model(features).numpy()
    cache = model.init_cache(model.encode(features["inputs"]), max_decode_length=9)
    assert all(value.shape[0] == 2 for value in cache.values())
    tokens = tf.fill([2], BOS)
    for t in range(6):
        step_logits, cache = model.decode_step(tokens, cache)
        assert step_logits.dtype == tf.float32
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t], atol=1e-5)
        tokens = tf.constant(features["targets"][:, t])
    assert cache["step"].numpy().tolist() == [6, 6]


def test_checkpoint_round_trip_restores_every_weight(tmp_path):
    source = build(seed=0, share_embeddings=False)
    target = build(seed=1, share_embeddings=False)
    features = batch()
    assert np.abs(source(features).numpy() - target(features).numpy()).max() > 1e-3
    path = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=target).read(path).assert_consumed()
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(source(features).numpy(), target(features).numpy())


def _adam_train_step(model, optimizer):
    def step(features):
        with tf.GradientTape() as tape:
            loss_sum, count = losses.cross_entropy_sums(model(features, training=True),
                                                        features["targets"], pad_id=PAD)
            loss = loss_sum / count
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss
    return step


def test_train_step_compiles_with_xla_and_matches_eager():
    eager_model = build(dropout=0.0, attention_dropout=0.0)
    jit_model = build(seed=1, dropout=0.0, attention_dropout=0.0)
    jit_model.set_weights(eager_model.get_weights())
    eager_opt, jit_opt = keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3)
    eager_step = _adam_train_step(eager_model, eager_opt)
    jit_step = tf.function(_adam_train_step(jit_model, jit_opt), jit_compile=True)
    features = batch(2)
    for _ in range(2):
        np.testing.assert_allclose(float(jit_step(features)), float(eager_step(features)),
                                   rtol=1e-5)
    for a, b in zip(eager_model.trainable_variables, jit_model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_drives_loss_on_a_fixed_batch_close_to_zero():
    model = build(num_encoder_layers=1, num_decoder_layers=1, d_model=32, ffn_dim=64,
                  dropout=0.0, attention_dropout=0.0)
    step = tf.function(_adam_train_step(model, keras.optimizers.Adam(3e-3)), jit_compile=True)
    features = batch(3, source_lengths=(6, 4, 5, 6), target_lengths=(7, 5, 6, 3),
                     width=(6, 7))
    first = float(step(features))
    for _ in range(250):
        loss = float(step(features))
    assert first > 2.0 and loss < 0.02, (first, loss)


@pytest.mark.parametrize("name", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_gives_finite_float32_logits(policy, name):
    policy(name)
    model = build()
    features = batch(4)
    features["inputs"][1] = PAD  # an empty source: fully masked cross-attention
    logits = model(features, training=True)
    assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()
    cache = model.init_cache(model.encode(features["inputs"]), 4)
    step_logits, cache = model.decode_step(tf.fill([2], BOS), cache)
    assert step_logits.dtype == tf.float32 and np.isfinite(step_logits.numpy()).all()
    assert cache["key_0"].dtype == tf.as_dtype(name.split("_")[1])
    assert model.trainable_variables[0].dtype == tf.float32


def test_build_model_from_config_dict_and_errors():
    config = ml_collections.ConfigDict(TINY)
    model = models.build_model(config, source_vocab_size=VOCAB, target_vocab_size=VOCAB,
                               pad_id=PAD, eos_id=EOS, bos_id=BOS)
    assert isinstance(model, models.Transformer)
    assert model.config == models.TransformerConfig(
        source_vocab_size=VOCAB, target_vocab_size=VOCAB, pad_id=PAD, eos_id=EOS, bos_id=BOS,
        **{k: v for k, v in TINY.items() if k != "name"})
    with pytest.raises(ValueError, match="'transformr'"):
        models.build_model(dict(TINY, name="transformr"), source_vocab_size=VOCAB,
                           target_vocab_size=VOCAB, pad_id=PAD, eos_id=EOS, bos_id=BOS)
    with pytest.raises(ValueError, match="num_layers"):
        build(num_layers=3)
    with pytest.raises(ValueError, match="num_heads"):
        build(num_heads=3)
    with pytest.raises(Exception):  # frozen
        model.config.d_model = 8
