"""launch/warm_start.py: a fresh run starts from another run's weights."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import toy_data
from configs import lstm_attention, tiny
from launch import trainer, vocabulary, warm_start
from pipeline import dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return toy_data.make_toy_data_dir(str(tmp_path_factory.mktemp("toy")))


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def family_config(family: str, *, num_steps: int):
    config = tiny.get_config() if family == "transformer" else lstm_attention.get_config()
    if family == "lstm_attention":
        config.model.embed_dim, config.model.hidden_dim = 16, 32
        config.model.num_encoder_layers = config.model.num_decoder_layers = 1
        config.data.tokens_per_batch = 256
    config.train.num_steps, config.train.checkpoint_every_steps = num_steps, num_steps
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 5
    return config


def train(config, workdir, data_dir):
    return trainer.train(config, workdir=str(workdir), data_dir=data_dir,
                         strategy=tf.distribute.get_strategy())


def mean_loss(stats):
    return sum(s.loss_sum for s in stats) / sum(s.target_tokens for s in stats)


def built_model(config, data_dir):
    resolved = trainer.resolve_config(config, dataset.load_metadata(data_dir),
                                      strategy=tf.distribute.get_strategy())
    model = vocabulary.build_model(resolved)
    return model, resolved


@pytest.mark.parametrize("family", ["transformer", "lstm_attention"])
def test_the_weights_are_the_sources_and_a_warm_run_starts_where_it_ended(
        family, data_dir, tmp_path):
    source = train(family_config(family, num_steps=60), tmp_path / "source", data_dir)
    model, resolved = built_model(family_config(family, num_steps=1), data_dir)
    path = warm_start.load(str(tmp_path / "source"), model=model,
                           tokenizer_sha256=resolved.data.tokenizer_sha256)
    assert path.endswith("ckpt-60")
    reader = tf.train.load_checkpoint(path)
    for index, variable in enumerate(model.variables):
        np.testing.assert_array_equal(
            variable.numpy(), reader.get_tensor(f"model/{index:05d}/.ATTRIBUTES/VARIABLE_VALUE"))

    config = family_config(family, num_steps=10)
    config.train.init_from = str(tmp_path / "source")
    warm = train(config, tmp_path / "warm", data_dir)
    cold = train(family_config(family, num_steps=10), tmp_path / "cold", data_dir)
    assert len(warm) == 10  # its own step counts from 0
    assert mean_loss(warm[:3]) < 0.7 * mean_loss(cold[:3])
    assert mean_loss(warm[:3]) < 1.5 * mean_loss(source[-5:])


def test_a_warm_run_that_resumes_reads_its_own_checkpoint(data_dir, tmp_path):
    train(family_config("transformer", num_steps=20), tmp_path / "source", data_dir)
    config = family_config("transformer", num_steps=10)
    config.train.init_from = str(tmp_path / "source")
    train(config, tmp_path / "warm", data_dir)
    config.train.num_steps = 12
    config.train.init_from = str(tmp_path / "missing")  # would fail if it were read
    assert len(train(config, tmp_path / "warm", data_dir)) == 2


def test_init_optimizer_takes_the_moments_and_iterations(data_dir, tmp_path):
    train(family_config("transformer", num_steps=20), tmp_path / "source", data_dir)
    config = family_config("transformer", num_steps=20)
    resolved = trainer.resolve_config(config, dataset.load_metadata(data_dir),
                                      strategy=tf.distribute.get_strategy())
    fresh = trainer.Trainer(resolved, data_dir=data_dir, strategy=tf.distribute.get_strategy(),
                            worker_index=0, num_workers=1)
    warm_start.load(str(tmp_path / "source"), model=fresh.model, optimizer=fresh.optimizer,
                    tokenizer_sha256=resolved.data.tokenizer_sha256)
    assert int(fresh.optimizer.iterations.numpy()) == 20 and int(fresh.step.numpy()) == 0
    assert any(np.abs(v.numpy()).max() > 0 for v in fresh.optimizer.variables[2:])


def test_a_model_of_another_shape_is_one_error_naming_the_variables(data_dir, tmp_path):
    train(family_config("transformer", num_steps=2), tmp_path / "source", data_dir)
    config = family_config("transformer", num_steps=2)
    config.model.d_model, config.model.ffn_dim = 64, 128
    config.train.init_from = str(tmp_path / "source" / "checkpoints" / "ckpt-2")
    with pytest.raises(trainer.TrainingError) as error:
        train(config, tmp_path / "warm", data_dir)
    message = str(error.value)
    assert "\n" not in message and "does not fit this model" in message
    assert "source_embedding/table [21, 32] vs [21, 64]" in message
    assert not os.path.exists(tmp_path / "warm" / "checkpoints" / "checkpoint")


def test_bad_sources_are_clear_errors(data_dir, tmp_path):
    model, resolved = built_model(family_config("transformer", num_steps=1), data_dir)
    (tmp_path / "empty").mkdir()
    for source, message in ((tmp_path / "empty", "holds no checkpoint"),
                            (tmp_path / "nothing", "not a workdir")):
        with pytest.raises(warm_start.WarmStartError, match=message):
            warm_start.load(str(source), model=model,
                            tokenizer_sha256=resolved.data.tokenizer_sha256)
    train(family_config("transformer", num_steps=2), tmp_path / "source", data_dir)
    with pytest.raises(warm_start.WarmStartError, match="--tokenizer_model"):
        warm_start.load(str(tmp_path / "source"), model=model, tokenizer_sha256="f" * 64)
