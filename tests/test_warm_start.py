"""launch/warm_start.py: a fresh run starts from another run's weights."""

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

import toy_data
from configs import lstm_attention, tiny
from launch import (evaluator, export_lib, teacher_forcing, trainer, vocab_map, vocabulary,
                    warm_start)
from pipeline import dataset, tokenizer


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


def test_an_export_and_a_published_version_seed_a_run_with_the_exported_weights(
        data_dir, tmp_path):
    train(family_config("transformer", num_steps=30), tmp_path / "source", data_dir)
    version = evaluator.export_checkpoint(workdir=str(tmp_path / "source"), data_dir=data_dir,
                                          export_dir=str(tmp_path / "export"))
    assert os.path.exists(os.path.join(version, "saved_model.pb"))
    published = tmp_path / "published"
    published.mkdir()
    (published / "latest.json").write_text(json.dumps({"model_dir": version}))
    reader = tf.train.load_checkpoint(str(tmp_path / "source" / "checkpoints" / "ckpt-30"))
    for source in (tmp_path / "export", version, published):
        model, resolved = built_model(family_config("transformer", num_steps=1), data_dir)
        path = warm_start.load(str(source), model=model,
                               tokenizer_sha256=resolved.data.tokenizer_sha256)
        assert path == os.path.join(version, warm_start.BUNDLE, "weights")
        for index, variable in enumerate(model.variables):
            np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(
                f"model/{index:05d}/.ATTRIBUTES/VARIABLE_VALUE"))


# The shifted data set: words over other letters, so its tokenizer drops a, b (A, B),
# adds i, j (I, J) and moves the ids of the letters both have.
SHIFTED = "cdefghij"


@pytest.fixture(scope="module")
def shifted_dir(tmp_path_factory):
    return toy_data.make_toy_data_dir(str(tmp_path_factory.mktemp("shifted")), letters=SHIFTED)


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    """A source model trained on the original letters, exported (with its tokenizer)."""
    root = tmp_path_factory.mktemp("source")
    config = family_config("transformer", num_steps=300)
    config.model.tie_output = False  # exercises the output kernel's columns and bias too
    train(config, root / "work", data_dir)
    evaluator.export_checkpoint(workdir=str(root / "work"), data_dir=data_dir,
                                export_dir=str(root / "export"))
    return str(root / "export"), config


def piece_ids(directory) -> dict:
    processor = spm.SentencePieceProcessor(model_file=os.path.join(str(directory), "spm.model"))
    return {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}


def test_init_vocab_map_carries_the_shared_pieces_rows_exactly(data_dir, shifted_dir, exported):
    export_root, source_config = exported
    old_ids, new_ids = piece_ids(data_dir), piece_ids(shifted_dir)
    assert any(old_ids[p] != new_ids[p] for p in set(old_ids) & set(new_ids))  # ids moved
    model, resolved = built_model(source_config, shifted_dir)
    fresh = {v.path: v.numpy() for v in model.variables}
    with pytest.raises(warm_start.WarmStartError, match="init_vocab_map=True"):
        warm_start.load(export_root, model=model,
                        tokenizer_sha256=resolved.data.tokenizer_sha256)
    source, target = tokenizer.load_tokenizers(shifted_dir, dataset.load_metadata(shifted_dir))
    warm_start.load(export_root, model=model, tokenizer_sha256=resolved.data.tokenizer_sha256,
                    vocab_map=vocab_map.planner(source_tokenizer=source,
                                                target_tokenizer=target, shared=True))
    reader = tf.train.load_checkpoint(os.path.join(export_lib.resolve(export_root),
                                                   warm_start.BUNDLE, "weights"))
    moved = 0
    for index, variable in enumerate(model.variables):
        stored = reader.get_tensor(f"model/{index:05d}/.ATTRIBUTES/VARIABLE_VALUE")
        name = "/".join(variable.path.split("/")[-2:])
        if name not in vocab_map.VOCABULARY_VARIABLES:
            np.testing.assert_array_equal(variable.numpy(), stored)
            continue
        axis = vocab_map.VOCABULARY_VARIABLES[name][1]
        value = np.moveaxis(variable.numpy(), axis, 0)
        stored, initial = np.moveaxis(stored, axis, 0), np.moveaxis(fresh[variable.path], axis, 0)
        for piece, new_id in new_ids.items():
            expected = stored[old_ids[piece]] if piece in old_ids else initial[new_id]
            np.testing.assert_array_equal(value[new_id], expected)
        moved += 1
    assert moved == 3  # the shared table, the output kernel and its bias


def test_a_warm_start_with_the_vocab_map_beats_the_same_steps_from_scratch_on_shifted_data(
        shifted_dir, exported, tmp_path):
    export_root, source_config = exported
    config = family_config("transformer", num_steps=40)
    config.model.tie_output = False
    config.train.init_from, config.train.init_vocab_map = export_root, True
    warm = train(config, tmp_path / "warm", shifted_dir)
    cold_config = family_config("transformer", num_steps=40)
    cold_config.model.tie_output = False
    cold = train(cold_config, tmp_path / "cold", shifted_dir)
    # Training loss over the 40 steps, and the dev loss (teacher-forced) at the end.
    scores = {}
    for name in ("warm", "cold"):
        run = evaluator.load_run(workdir=str(tmp_path / name), data_dir=shifted_dir)
        evaluator.restore(run, [str(tmp_path / name / "checkpoints" / "ckpt-40")])
        scores[name] = teacher_forcing.split_scores(run.model, config=run.config, split="dev",
                                                    data_dir=shifted_dir)
    print(f"shifted data, 40 steps: train loss warm {mean_loss(warm):.3f} cold "
          f"{mean_loss(cold):.3f}; dev xent warm {scores['warm']['xent']:.3f} cold "
          f"{scores['cold']['xent']:.3f}; dev token accuracy warm "
          f"{scores['warm']['token_accuracy']:.1f}% cold {scores['cold']['token_accuracy']:.1f}%")
    assert mean_loss(warm) < 0.7 * mean_loss(cold)
    assert scores["warm"]["xent"] < 0.7 * scores["cold"]["xent"]


def test_init_vocab_map_is_refused_without_init_from_or_with_init_optimizer():
    config = family_config("transformer", num_steps=1)
    config.train.init_vocab_map = True
    with pytest.raises(ValueError, match="needs config.train.init_from"):
        trainer.validate_config(config)
    config.train.init_from, config.train.init_optimizer = "somewhere", True
    with pytest.raises(ValueError, match="cannot carry the optimizer state"):
        trainer.validate_config(config)


def test_init_vocab_map_needs_the_sources_tokenizer(data_dir, shifted_dir, tmp_path):
    train(family_config("transformer", num_steps=2), tmp_path / "source", data_dir)
    config = family_config("transformer", num_steps=2)
    config.train.init_from, config.train.init_vocab_map = str(tmp_path / "source"), True
    with pytest.raises(trainer.TrainingError, match="needs the source's tokenizer"):
        train(config, tmp_path / "warm", shifted_dir)
