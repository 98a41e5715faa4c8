"""Trainer behaviour in-process: loss falls, XLA, mixed precision, guards, resume checks."""

import json
import logging
import os
import socket
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import toy_data
from configs import tiny
from launch import checkpoints, precision, shared_files, trainer, vocabulary
from pipeline import dataset


def tiny_config(**train_overrides):
    config = tiny.get_config()
    for key, value in train_overrides.items():
        setattr(config.train, key, value)
    return config


def train(config, workdir, data_dir):
    return trainer.train(config, workdir=str(workdir), data_dir=data_dir,
                         strategy=tf.distribute.get_strategy())


def mean_loss(stats):
    return sum(s.loss_sum for s in stats) / sum(s.target_tokens for s in stats)


def test_tiny_config_loss_falls(data_dir, tmp_path):
    config = tiny_config(num_steps=150, checkpoint_every_steps=75)
    history = trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                            strategy=tf.distribute.get_strategy())
    assert len(history) == 150
    assert all(s.finite for s in history)
    first, last = mean_loss(history[:10]), mean_loss(history[-10:])
    assert last < 0.6 * first, (first, last)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["source_vocab_size"] == saved["data"]["target_vocab_size"] == 21
    assert saved["data"]["vocabulary_layout"] == "shared"
    assert saved["model"]["share_embeddings"] is True and saved["model"]["tie_output"] is True
    assert saved["data"]["bucket_boundaries"] == [8, 16]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-150")
    tags = set()
    for path in tf.io.gfile.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "learning_rate", "tokens_per_s", "grad_norm", "step_time"} <= tags


def test_train_step_compiles_with_xla_and_matches_eager(data_dir, tmp_path):
    runs = {}
    for jit in (False, True):
        config = tiny_config(num_steps=4, jit_compile=jit, deterministic=True)
        config.data.static_shapes = True  # the same padded batches with and without XLA
        runs[jit] = trainer.train(config, workdir=str(tmp_path / str(jit)),
                                  data_dir=data_dir, strategy=tf.distribute.get_strategy())
    for eager, xla in zip(runs[False], runs[True]):
        assert xla.target_tokens == eager.target_tokens
        np.testing.assert_allclose(xla.loss_sum, eager.loss_sum, rtol=1e-4)


def test_xla_compiles_the_whole_step_on_one_replica(data_dir):
    """What TPUStrategy compiles: gradients, clipping and the optimizer update together."""
    config = trainer.resolve_config(tiny_config(jit_compile=True),
                                    dataset.load_metadata(data_dir),
                                    strategy=tf.distribute.get_strategy())
    run = trainer.Trainer(config, data_dir=data_dir, strategy=tf.distribute.get_strategy(),
                          worker_index=0, num_workers=1)
    batch = next(iter(run.dataset))
    whole = run._step_fn.experimental_get_compiler_ir([batch])(stage="hlo")
    gradients_only = tf.function(run._gradients, jit_compile=True
                                 ).experimental_get_compiler_ir(batch)(stage="hlo")
    # Adam divides by sqrt(v) (layer norm only has rsqrt): the update is in the program.
    assert " sqrt(" in whole and " sqrt(" not in gradients_only


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(data_dir, tmp_path, policy):
    config = tiny_config(num_steps=30, mixed_precision=policy)
    history = trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                            strategy=tf.distribute.get_strategy())
    finite = [s for s in history if s.finite]
    assert len(finite) >= 25
    assert mean_loss(finite[-5:]) < mean_loss(finite[:5])


@pytest.mark.parametrize("flags, policy", [("flags : fpu avx2 fma", ""),
                                           ("flags : fpu avx2 avx512_bf16", "mixed_bfloat16")])
def test_auto_precision_is_resolved_for_the_cpu_and_saved(data_dir, tmp_path, monkeypatch,
                                                          flags, policy):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\n{flags}\n")
    monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
    history = trainer.train(tiny_config(num_steps=3, mixed_precision="auto"),
                            workdir=str(tmp_path / "work"), data_dir=data_dir,
                            strategy=tf.distribute.get_strategy())
    assert len(history) == 3
    saved = json.loads((tmp_path / "work" / "config.json").read_text())
    assert saved["train"]["mixed_precision"] == policy
    assert keras.mixed_precision.global_policy().name == (policy or "float32")


def test_resume_continues_from_the_checkpoint(data_dir, tmp_path):
    config = tiny_config(num_steps=10)
    first = trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                          strategy=tf.distribute.get_strategy())
    assert len(first) == 10
    config.train.num_steps = 15
    second = trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                           strategy=tf.distribute.get_strategy())
    assert len(second) == 5
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-15")


def test_resuming_in_another_precision_continues_with_a_warning(data_dir, tmp_path, caplog):
    trainer.train(tiny_config(num_steps=4), workdir=str(tmp_path), data_dir=data_dir,
                  strategy=tf.distribute.get_strategy())
    with caplog.at_level(logging.WARNING):
        resumed = trainer.train(tiny_config(num_steps=6, mixed_precision="mixed_bfloat16"),
                                workdir=str(tmp_path), data_dir=data_dir,
                                strategy=tf.distribute.get_strategy())
    assert len(resumed) == 2
    assert "trained in float32; continuing in mixed_bfloat16" in caplog.text
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["mixed_precision"] == "mixed_bfloat16"


def test_non_finite_losses_abort_naming_the_step(data_dir, tmp_path):
    config = tiny_config(num_steps=40, max_nonfinite_steps=3, checkpoint_every_steps=1,
                         steps_per_loop=1)
    config.optimizer.learning_rate = 1e30
    config.optimizer.warmup_steps = 0
    config.optimizer.clip_norm = 0.0
    with pytest.raises(trainer.TrainingError, match=r"3 consecutive non-finite .* step \d+"):
        trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                      strategy=tf.distribute.get_strategy())
    saved = checkpoints_in(tmp_path)
    assert saved
    for path in saved:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            if not name.startswith(("model/", "optimizer/")):
                continue  # the data iterator's state is not a tensor of numbers
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), (path, name)


def checkpoints_in(workdir):
    state = tf.train.get_checkpoint_state(str(workdir / checkpoints.CHECKPOINT_DIR))
    return list(state.all_model_checkpoint_paths) if state else []


def test_resume_refuses_another_tokenizer(data_dir, tmp_path):
    trainer.train(tiny_config(num_steps=2), workdir=str(tmp_path / "work"),
                  data_dir=data_dir, strategy=tf.distribute.get_strategy())
    other = toy_data.make_toy_data_dir(str(tmp_path / "other"), num_train=64)
    metadata_path = os.path.join(other, "metadata.json")
    metadata = json.loads(open(metadata_path).read())
    metadata["tokenizer"]["sha256"] = "f" * 64
    open(metadata_path, "w").write(json.dumps(metadata))
    with pytest.raises(trainer.TrainingError, match="tokenizer sha256"):
        trainer.train(tiny_config(num_steps=4), workdir=str(tmp_path / "work"),
                      data_dir=other, strategy=tf.distribute.get_strategy())


def test_resume_refuses_another_model_config(data_dir, tmp_path):
    trainer.train(tiny_config(num_steps=2), workdir=str(tmp_path), data_dir=data_dir,
                  strategy=tf.distribute.get_strategy())
    config = tiny_config(num_steps=4)
    config.model.d_model = 64
    with pytest.raises(trainer.TrainingError, match="d_model: 32 -> 64"):
        trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                      strategy=tf.distribute.get_strategy())


def test_share_embeddings_on_separate_vocabularies_is_refused_before_anything_is_written(
        tmp_path):
    separate = toy_data.make_toy_data_dir(str(tmp_path / "data"), num_train=64,
                                          separate_vocabs=True)
    config = tiny_config(num_steps=2)
    config.model.share_embeddings = True
    with pytest.raises(vocabulary.VocabularyError, match="separate source and target"):
        trainer.train(config, workdir=str(tmp_path / "work"), data_dir=separate,
                      strategy=tf.distribute.get_strategy())
    assert not (tmp_path / "work").exists()


def test_resume_refuses_a_workdir_trained_on_the_other_vocabulary_layout(data_dir, tmp_path):
    trainer.train(tiny_config(num_steps=2), workdir=str(tmp_path / "work"),
                  data_dir=data_dir, strategy=tf.distribute.get_strategy())
    separate = toy_data.make_toy_data_dir(str(tmp_path / "data"), num_train=64,
                                          separate_vocabs=True)
    with pytest.raises(trainer.TrainingError, match="trained on a shared source/target "
                       "vocabulary but --data_dir has a separate one"):
        trainer.train(tiny_config(num_steps=4), workdir=str(tmp_path / "work"),
                      data_dir=separate, strategy=tf.distribute.get_strategy())


def test_a_workdir_from_before_separate_vocabularies_resumes(data_dir, tmp_path):
    """config.json without the layout keys (one vocab_size, no tie_output) still resumes."""
    trainer.train(tiny_config(num_steps=2), workdir=str(tmp_path), data_dir=data_dir,
                  strategy=tf.distribute.get_strategy())
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["data"]["vocab_size"] = saved["data"].pop("source_vocab_size")
    for key in ("target_vocab_size", "vocabulary_layout"):
        del saved["data"][key]
    del saved["model"]["tie_output"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    history = trainer.train(tiny_config(num_steps=4), workdir=str(tmp_path),
                            data_dir=data_dir, strategy=tf.distribute.get_strategy())
    assert len(history) == 2 and all(s.finite for s in history)


@pytest.mark.parametrize("field,value,message", [
    ("train.num_steps", 0, "positive integer"),
    ("train.mixed_precision", "float8", "mixed_precision"),
    ("optimizer.name", "sgd", "optimizer.name"),
    ("optimizer.schedule", "exponential", "schedule"),
    ("model.name", "rnn", "rnn"),
])
def test_validate_config_rejects_bad_values(field, value, message):
    config = tiny.get_config()
    section, key = field.split(".")
    setattr(config[section], key, value)
    with pytest.raises(ValueError, match=message):
        trainer.validate_config(config)


def test_refuses_data_dir_without_completed_marker(data_dir, tmp_path):
    incomplete = toy_data.make_toy_data_dir(str(tmp_path / "data"), num_train=16)
    os.remove(os.path.join(incomplete, "_COMPLETED"))
    with pytest.raises(dataset.DataDirError, match="_COMPLETED"):
        trainer.train(tiny_config(), workdir=str(tmp_path / "work"), data_dir=incomplete,
                      strategy=tf.distribute.get_strategy())
    assert not (tmp_path / "work").exists()


def test_lstm_attention_trains_through_the_same_loop(data_dir, tmp_path):
    from configs import lstm_attention
    config = lstm_attention.get_config()
    config.model.embed_dim, config.model.hidden_dim = 16, 32
    config.model.num_encoder_layers = config.model.num_decoder_layers = 1
    config.data.tokens_per_batch = 256
    config.train.num_steps, config.train.steps_per_loop = 40, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 5
    history = trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                            strategy=tf.distribute.get_strategy())
    assert len(history) == 40 and all(s.finite for s in history)
    assert mean_loss(history[-5:]) < 0.8 * mean_loss(history[:5])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["name"] == "lstm_attention"


def test_gradient_accumulation_takes_k_batches_per_optimizer_step(data_dir):
    config = trainer.resolve_config(tiny_config(grad_accum_steps=2),
                                    dataset.load_metadata(data_dir),
                                    strategy=tf.distribute.get_strategy())
    run = trainer.Trainer(config, data_dir=data_dir, strategy=tf.distribute.get_strategy(),
                          worker_index=0, num_workers=1)
    stats = run.run_loop(3)
    assert int(run.step.numpy()) == int(run.optimizer.iterations.numpy()) == 3
    batches = iter(dataset.make_train_dataset(
        data_dir=data_dir, split="train", boundaries=config.data.bucket_boundaries,
        tokens_per_batch=config.data.tokens_per_batch, shuffle_buffer=config.data.shuffle_buffer,
        seed=config.train.seed, static_shapes=False))
    expected = []
    for _ in range(3):
        micro = [next(batches)["targets"].numpy() for _ in range(2)]
        expected.append(float(sum((m != 0).sum() for m in micro)))
    assert [s.target_tokens for s in stats] == expected


def poison_gradients(monkeypatch, *, when):
    """Makes the gradients NaN on the steps where `when(step variable)` holds."""
    clean = trainer.Trainer._gradients

    def poisoned(self, batch):
        grads, sums = clean(self, batch)
        factor = tf.where(when(self.step), np.float32(np.nan), np.float32(1.0))
        return [g * factor for g in grads], sums

    monkeypatch.setattr(trainer.Trainer, "_gradients", poisoned)


@pytest.mark.parametrize("policy", ["", "mixed_bfloat16"])
def test_many_non_finite_steps_leave_the_scale_at_1_and_later_steps_still_learn(
        data_dir, monkeypatch, policy):
    """The halving wrapper reached a scale of 0 after about 150 skips: no step updated again."""
    poison_gradients(monkeypatch, when=lambda step: step < 150)
    config = trainer.resolve_config(tiny_config(mixed_precision=policy),
                                    dataset.load_metadata(data_dir),
                                    strategy=tf.distribute.get_strategy())
    trainer._configure_runtime(config)
    run = trainer.Trainer(config, data_dir=data_dir, strategy=tf.distribute.get_strategy(),
                          worker_index=0, num_workers=1)
    initial = [v.numpy() for v in run.model.trainable_variables]
    skipped = run.run_loop(150)
    assert not any(s.finite for s in skipped)
    assert int(run.optimizer.iterations.numpy()) == 0
    for variable, value in zip(run.model.trainable_variables, initial):
        np.testing.assert_array_equal(variable.numpy(), value)
    learned = run.run_loop(30)
    assert all(s.finite for s in learned)
    assert int(run.optimizer.iterations.numpy()) == 30
    assert float(run.optimizer.dynamic_scale.numpy()) == 1.0
    assert mean_loss(learned[-5:]) < 0.9 * mean_loss(learned[:5])


def test_skipped_steps_are_counted_in_the_log_and_in_tensorboard(data_dir, tmp_path,
                                                                  monkeypatch, caplog):
    poison_gradients(monkeypatch, when=lambda step: step % 3 == 2)  # steps 3, 6, 9, ...
    config = tiny_config(num_steps=30, max_nonfinite_steps=2)
    with caplog.at_level(logging.WARNING):
        history = trainer.train(config, workdir=str(tmp_path), data_dir=data_dir,
                                strategy=tf.distribute.get_strategy())
    assert [i + 1 for i, s in enumerate(history) if not s.finite] == list(range(3, 31, 3))
    assert "3 of the 10 steps up to step 10 had non-finite gradients" in caplog.text
    assert "(10 in this run so far)" in caplog.text
    counts = {}
    for path in tf.io.gfile.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "nonfinite_skipped_steps":
                    counts[event.step] = float(tf.make_ndarray(value.tensor))
    assert counts == {10: 3.0, 20: 3.0, 30: 4.0}


def test_a_second_trainer_on_a_live_workdir_is_refused_before_writing(data_dir, tmp_path):
    config = tiny_config(num_steps=10)
    config.train.lease_seconds = 1.0
    with shared_files.hold(str(tmp_path / "train"), ttl=1.0):  # a live trainer's claim
        with pytest.raises(trainer.TrainingError,
                           match="another trainer is writing this workdir: .* is in use by "
                                 "another writer"):
            train(config, tmp_path, data_dir)
        assert not (tmp_path / "config.json").exists()
        assert not (tmp_path / "checkpoints").exists()
    assert len(train(config, tmp_path, data_dir)) == 10  # released: it trains


def test_the_claim_of_a_killed_trainer_does_not_block_the_restart(data_dir, tmp_path):
    claims = tmp_path / "train"
    claims.mkdir()
    dead = {"host": socket.gethostname(), "pid": 2 ** 22 + 7, "id": "x",
            "expires": time.time() + 3600}  # unexpired, but its process is gone
    (claims / "_lease-x.json").write_text(json.dumps(dead))
    assert len(train(tiny_config(num_steps=10), tmp_path, data_dir)) == 10
    assert not (claims / "_lease-x.json").exists()
    assert not list(claims.glob("_lease-*.json"))  # ours is released at the end


def test_a_lost_lease_stops_before_the_next_save(tmp_path):
    lease = shared_files.Lease(str(tmp_path))
    lease.acquire(wait=1)
    os.remove(lease.path)  # taken over: another trainer removed it as stale
    with pytest.raises(trainer.TrainingError, match="taken over while held"):
        trainer._check_lease(lease)
    lease.release()
