"""Early stopping: the policy, the evaluator's stop marker, and the trainer's dev loss."""

import json
import os
import subprocess
import sys
import types

import ml_collections
import pytest
import tensorflow as tf

import toy_data
from configs import tiny
from launch import early_stopping, evaluator, teacher_forcing, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy(metric="bleu", *, patience=2, min_delta=0.0):
    return early_stopping.Policy(metric=metric, patience=patience, min_delta=min_delta)


def rows(metric, values, *, start=100, every=100):
    return [{"step": start + every * index, metric: value} for index, value in enumerate(values)]


def test_it_stops_after_patience_evaluations_without_an_improvement_larger_than_min_delta():
    # BLEU: 20 -> 25 improves; 25.3 is within min_delta 0.5; 24 is worse: 2 without.
    decision = early_stopping.decide(rows("bleu", [20, 25, 25.3, 24]),
                                     policy(patience=2, min_delta=0.5))
    assert (decision["best_step"], decision["best"], decision["step"]) == (200, 25, 400)
    assert "bleu did not improve by more than 0.5 in 2 evaluation(s) after step 200" \
        in decision["reason"]
    # Not yet: one evaluation without an improvement.
    assert early_stopping.decide(rows("bleu", [20, 25, 24]), policy(patience=2)) is None
    # An improvement resets the count.
    assert early_stopping.decide(rows("bleu", [20, 19, 21, 20]), policy(patience=2)) is None


def test_lower_is_better_metrics_and_rows_out_of_order_or_without_the_metric():
    history = rows("wer", [30, 28, 28.5, 29]) + [{"step": 50, "bleu": 3.0}]
    history.reverse()  # decide sorts by step
    decision = early_stopping.decide(history, policy("wer", patience=2))
    assert (decision["best_step"], decision["best"]) == (200, 28)
    assert early_stopping.decide(rows("dev_loss", [2.0, 1.5, 1.4, 1.3]),
                                 policy("dev_loss", patience=1)) is None
    assert early_stopping.decide(rows("dev_loss", [2.0, 1.5, 1.45]),
                                 policy("dev_loss", patience=1, min_delta=0.1))["best_step"] == 200


@pytest.mark.parametrize("field,value,message", [
    ("metric", "loss", "config.early_stopping.metric='loss' is not one of dev_loss, bleu"),
    ("patience", 0, "config.early_stopping.patience must be an integer >= 1"),
    ("min_delta", -1.0, "config.early_stopping.min_delta must be >= 0"),
])
def test_invalid_settings_are_refused_naming_the_field(field, value, message):
    config = tiny.get_config()
    config.early_stopping[field] = value
    with pytest.raises(ValueError, match=message):
        trainer.validate_config(config)


def test_a_config_from_before_early_stopping_has_it_off():
    config = ml_collections.ConfigDict({"train": {"num_steps": 1}})
    assert not early_stopping.policy_from_config(config).enabled


def test_the_marker_is_written_once_and_an_unreadable_one_still_stops(tmp_path):
    assert early_stopping.read_marker(str(tmp_path)) is None
    assert early_stopping.write_marker(str(tmp_path), {"reason": "first"}, by="a")
    assert not early_stopping.write_marker(str(tmp_path), {"reason": "second"}, by="b")
    assert early_stopping.read_marker(str(tmp_path)) == {"reason": "first", "by": "a"}
    (tmp_path / early_stopping.STOP_FILE).write_text("stop please")
    assert "stop please" in early_stopping.read_marker(str(tmp_path))["reason"]


def dev_loss_config(*, num_steps, patience, min_delta):
    config = tiny.get_config()
    config.train.num_steps, config.train.checkpoint_every_steps = num_steps, 10
    config.train.keep_checkpoints = 20
    config.early_stopping.metric = "dev_loss"
    config.early_stopping.patience, config.early_stopping.min_delta = patience, min_delta
    return config


def train(config, workdir, data_dir):
    return trainer.train(config, workdir=str(workdir), data_dir=data_dir,
                         strategy=tf.distribute.get_strategy())


def test_the_trainer_measures_dev_loss_at_each_checkpoint_and_stops_on_it(data_dir, tmp_path):
    # min_delta 100 nats: nothing after the first measurement counts as an improvement.
    config = dev_loss_config(num_steps=200, patience=2, min_delta=100.0)
    history = train(config, tmp_path, data_dir)
    assert len(history) == 30  # measured at 10 (best), 20 and 30: stopped there
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-30")
    recorded = [json.loads(line) for line in
                (tmp_path / "train" / trainer.DEV_LOSS_FILE).read_text().splitlines()]
    assert [row["step"] for row in recorded] == [10, 20, 30]
    marker = early_stopping.read_marker(str(tmp_path))
    assert (marker["by"], marker["metric"], marker["best_step"]) == ("s2s-train", "dev_loss", 10)
    assert marker["best"] == recorded[0]["dev_loss"]

    # The recorded dev loss is the evaluator's teacher-forced xent of that checkpoint.
    run = evaluator.load_run(workdir=str(tmp_path), data_dir=data_dir)
    evaluator.restore(run, [str(tmp_path / "checkpoints" / "ckpt-30")])
    xent = teacher_forcing.split_scores(run.model, config=run.config, split="dev",
                                        data_dir=data_dir)["xent"]
    assert recorded[-1]["dev_loss"] == pytest.approx(xent, rel=1e-5)

    # Restarted, it finds the marker and trains no step; without it, it trains on.
    assert train(config, tmp_path, data_dir) == []
    os.remove(early_stopping.marker_path(str(tmp_path)))
    config.early_stopping.metric = ""
    assert len(train(config, tmp_path, data_dir)) == 170


def test_dev_loss_that_keeps_improving_does_not_stop(data_dir, tmp_path):
    config = dev_loss_config(num_steps=60, patience=1, min_delta=0.0)
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 5
    assert len(train(config, tmp_path, data_dir)) == 60
    recorded = [json.loads(line) for line in
                (tmp_path / "train" / trainer.DEV_LOSS_FILE).read_text().splitlines()]
    losses = [row["dev_loss"] for row in recorded]
    assert len(losses) == 6 and losses == sorted(losses, reverse=True)
    assert early_stopping.read_marker(str(tmp_path)) is None


def test_dev_loss_is_refused_for_multi_worker_runs_and_without_a_dev_split(data_dir, tmp_path):
    config = dev_loss_config(num_steps=10, patience=1, min_delta=0.0)
    two_workers = types.SimpleNamespace(num_workers=2)
    with pytest.raises(trainer.TrainingError, match="needs a single-process run"):
        trainer._Stopping(config, workdir=str(tmp_path), data_dir=data_dir, model=None,
                          fleet=two_workers, is_chief=True)
    no_dev = toy_data.make_toy_data_dir(str(tmp_path / "no_dev"), num_dev=0)
    one_worker = types.SimpleNamespace(num_workers=1)
    with pytest.raises(trainer.TrainingError, match="needs a dev split"):
        trainer._Stopping(config, workdir=str(tmp_path), data_dir=no_dev, model=None,
                          fleet=one_worker, is_chief=True)


def env():
    values = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    values["PYTHONPATH"] = os.pathsep.join([REPO, values.get("PYTHONPATH", "")])
    return values


def test_the_evaluator_writes_the_marker_and_the_running_trainer_stops(data_dir, tmp_path):
    """The two jobs as separate processes, started together (the evaluator waits for the
    trainer's config.json): s2s-evaluate --watch scores each checkpoint; a
    token-accuracy gain of more than 200 points is impossible, so with patience 1 the second
    scored checkpoint stops the run long before num_steps."""
    workdir = tmp_path / "work"
    policy_flags = ["--config.early_stopping.metric=token_accuracy",
                    "--config.early_stopping.patience=1", "--config.early_stopping.min_delta=200"]
    log = open(tmp_path / "train.log", "w")
    trainer_process = subprocess.Popen(
        [sys.executable, "-m", "launch.train", f"--config={REPO}/configs/tiny.py",
         f"--data_dir={data_dir}", f"--workdir={workdir}", "--config.train.num_steps=100000",
         "--config.train.checkpoint_every_steps=50", "--config.train.keep_checkpoints=50",
         *policy_flags], env=env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        evaluated = subprocess.run(
            [sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}",
             f"--data_dir={data_dir}", "--split=dev", "--watch", "--timeout=300",
             "--noexport_best", "--beam_size=1"],
            env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        trainer_process.wait(timeout=300)
    finally:
        trainer_process.kill()
        log.close()
    trained = (tmp_path / "train.log").read_text()
    assert "early stopping: token_accuracy did not improve by more than 200" in evaluated.stdout
    assert trainer_process.returncode == 0, trained[-3000:]
    marker = early_stopping.read_marker(str(workdir))
    assert (marker["by"], marker["patience"]) == ("s2s-evaluate", 1)
    assert "early stopping at step" in trained
    last = int(tf.train.latest_checkpoint(str(workdir / "checkpoints")).rsplit("-", 1)[1])
    assert marker["step"] <= last < 100000
    scored = [json.loads(line)["step"] for line in
              (workdir / "eval" / "dev" / "metrics.jsonl").read_text().splitlines()]
    assert marker["best_step"] == scored[0] and marker["step"] == scored[1]
