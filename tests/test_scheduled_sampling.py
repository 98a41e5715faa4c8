"""Scheduled sampling: the schedules, teacher forcing at probability 0, own tokens at 1."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import tiny
from launch import scheduled_sampling, trainer
from models import decoding, layers
from tiny_models import BOS, EOS, MODELS, PAD, VOCAB, build


def settings(**overrides):
    base = dict(schedule="linear", start_step=100, max_probability=0.5, ramp_steps=200,
                k=0.99, mode="argmax")
    return ml_collections.ConfigDict({**base, **overrides})


def batch(seed=0, rows=4):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, VOCAB, size=[rows, 5]).astype(np.int32)
    targets = rng.integers(3, VOCAB, size=[rows, 6]).astype(np.int32)
    inputs[:, -1], targets[:, -1] = EOS, EOS
    return {"inputs": tf.constant(inputs), "targets": tf.constant(targets)}


def sampling(probability, seed=(3, 4), sample=False):
    return layers.Sampling(tf.constant(probability, tf.float32),
                           tf.constant(seed, tf.int32), sample)


def test_schedules_rise_from_zero_at_the_start_step_to_the_maximum():
    at = {name: [float(scheduled_sampling.probability(step, settings(schedule=name, k=k)))
                 for step in (0, 100, 200, 300, 100_000)]
          for name, k in (("linear", 0.99), ("exponential", 0.99), ("inverse_sigmoid", 20.0))}
    assert at["linear"] == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.5])
    assert at["exponential"] == pytest.approx(
        [0.0, 0.0, 0.5 * (1 - 0.99 ** 100), 0.5 * (1 - 0.99 ** 200), 0.5])
    assert at["inverse_sigmoid"] == pytest.approx(
        [0.0, 0.0, 0.5 * (1 - 21 / (20 + np.exp(5.0))), 0.5 * (1 - 21 / (20 + np.exp(10.0))),
         0.5])
    for values in at.values():
        assert values == sorted(values)


@pytest.mark.parametrize("bad, message", [
    (dict(schedule="cosine"), "not one of"), (dict(max_probability=0.0), "max_probability"),
    (dict(schedule="exponential", k=1.5), "k must be in"), (dict(mode="beam"), "mode")])
def test_a_schedule_that_cannot_run_is_refused_before_training(bad, message):
    config = tiny.get_config()
    config.train.scheduled_sampling.update(settings(**bad))
    with pytest.raises(ValueError, match=message):
        trainer.validate_config(config)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_at_probability_zero_loss_and_gradients_are_teacher_forcing_exactly(name):
    model, features = build(name), batch()
    model(features)

    rng_state = [v.numpy() for v in model.non_trainable_variables]

    def loss_and_grads(**kwargs):
        for variable, value in zip(model.non_trainable_variables, rng_state):
            variable.assign(value)  # the dropout seeds: the same masks for both passes
        with tf.GradientTape() as tape:
            hidden = model.decoder_hidden(features, training=True, **kwargs)
            loss, _ = model.output_loss_sums(hidden, features["targets"], pad_id=PAD)
        return loss, tape.gradient(loss, model.trainable_variables)

    forced_loss, forced = loss_and_grads()
    sampled_loss, sampled = loss_and_grads(sampling=sampling(0.0))
    assert float(sampled_loss) == float(forced_loss)
    for a, b in zip(forced, sampled):
        np.testing.assert_array_equal(tf.convert_to_tensor(a), tf.convert_to_tensor(b))


def test_transformer_at_probability_one_reads_its_first_pass_predictions():
    model, features = build("transformer"), batch()
    hidden = model.decoder_hidden(features, training=False, sampling=sampling(1.0))
    encoded = model.encode(features["inputs"])
    first = model.decoder_pass(encoded, layers.shift_right(features["targets"], BOS))
    own = tf.argmax(model.output_logits(first), axis=-1, output_type=tf.int32)
    expected = model.decoder_pass(encoded, layers.shift_right(own, BOS))
    np.testing.assert_allclose(hidden.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    forced = model.decoder_hidden(features, training=False)
    assert not np.allclose(hidden.numpy(), forced.numpy())


def test_lstm_at_probability_one_decodes_greedily_step_by_step():
    model, features = build("lstm_attention"), batch()
    hidden = model.decoder_hidden(features, training=False, sampling=sampling(1.0))
    own = tf.argmax(model.output_logits(hidden), axis=-1, output_type=tf.int32).numpy()
    greedy, _ = decoding.greedy_decode(model, features["inputs"], max_decode_length=6)
    for row, tokens in zip(own, greedy.numpy()):
        length = list(tokens).index(EOS) + 1 if EOS in tokens else 6
        assert list(row[:length]) == list(tokens[:length])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sampled_tokens_follow_the_seed(name):
    model, features = build(name), batch()
    runs = [model.decoder_hidden(features, training=False,
                                 sampling=sampling(1.0, seed=seed, sample=True)).numpy()
            for seed in ((5, 6), (5, 6), (8, 9))]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("name", ["transformer", "lstm_attention"])
def test_training_with_a_schedule_resumes_exactly(name, data_dir, tmp_path):
    """The coins come from (seed, step, replica): 2 x 6 steps with a restart end with the
    weights of 12 uninterrupted ones, and not with those of teacher forcing."""
    config = tiny.get_config()
    if name == "lstm_attention":
        config.model = ml_collections.ConfigDict(MODELS[name])
    config.train.update(num_steps=12, checkpoint_every_steps=6, deterministic=True)
    config.train.scheduled_sampling.update(settings(start_step=2, ramp_steps=4,
                                                    max_probability=1.0, mode="sample"))
    weights = []
    for workdir, stops in ((tmp_path / "once", [12]), (tmp_path / "twice", [6, 12]),
                           (tmp_path / "forced", [12])):
        if workdir.name == "forced":  # teacher forcing throughout: the schedule mattered
            config.train.scheduled_sampling.schedule = ""
        for steps in stops:
            config.train.num_steps = steps
            trainer.train(config.copy_and_resolve_references(), workdir=str(workdir),
                          data_dir=data_dir, strategy=tf.distribute.get_strategy())
        reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
        weights.append({k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                        if k.startswith("model/")})
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key], err_msg=key)
    assert any(not np.array_equal(weights[0][k], weights[2][k]) for k in weights[0])
