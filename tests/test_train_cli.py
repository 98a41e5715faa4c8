"""s2s-train as a user runs it: flag validation, SIGKILL + restart, SIGTERM and how fast."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import toy_data
from launch import exit_codes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LOSS = re.compile(r"step (\d+) loss ([0-9.]+)")


def train_command(data_dir, workdir, *extra):
    return [sys.executable, "-m", "launch.train", f"--config={REPO}/configs/tiny.py",
            f"--data_dir={data_dir}", f"--workdir={workdir}",
            "--config.train.num_steps=16", "--config.train.steps_per_loop=1",
            "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=4",
            "--config.train.deterministic=True", "--config.model.dropout=0.1", *extra]


def env():
    values = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    values["PYTHONPATH"] = os.pathsep.join([REPO, values.get("PYTHONPATH", "")])
    return values


def step_losses(text):
    return {int(step): loss for step, loss in STEP_LOSS.findall(text)}


def final_weights(workdir):
    reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


@pytest.mark.parametrize("args,message", [
    (["--config.model.no_such_key=3"], "no_such_key"),
    (["--strategy=parameter_server"], "parameter_server"),
    (["--config.train.num_steps=-1"], "positive integer"),
    (["--strategy=multi_worker_mirrored"], "TF_CONFIG"),
])
def test_bad_flags_are_rejected_before_the_workdir_is_touched(data_dir, tmp_path, args,
                                                              message):
    workdir = tmp_path / "work"
    result = subprocess.run(train_command(data_dir, workdir, *args), capture_output=True,
                            text=True, env=env(), cwd=REPO, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_sharing_embeddings_across_separate_vocabularies_is_one_error_line(tmp_path):
    separate = toy_data.make_toy_data_dir(str(tmp_path / "data"), num_train=64,
                                          separate_vocabs=True)
    workdir = tmp_path / "work"
    result = subprocess.run(
        train_command(separate, workdir, "--config.model.share_embeddings=True"),
        capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
    assert result.returncode == exit_codes.ERROR
    errors = [line for line in result.stderr.splitlines() if "s2s-train: error:" in line]
    assert len(errors) == 1 and "needs a shared vocabulary" in errors[0]
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_sigkill_then_restart_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    reference = subprocess.run(train_command(data_dir, tmp_path / "a"), capture_output=True,
                               text=True, env=env(), cwd=REPO, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = step_losses(reference.stderr)
    assert sorted(expected) == list(range(1, 17))

    victim = subprocess.Popen(train_command(data_dir, tmp_path / "b"), stderr=subprocess.PIPE,
                              text=True, env=env(), cwd=REPO)
    for line in victim.stderr:
        if "step 10 loss" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    resumed_from = int(tf.train.latest_checkpoint(str(tmp_path / "b" / "checkpoints"))
                       .rsplit("-", 1)[1])
    assert resumed_from >= 8

    restarted = subprocess.run(train_command(data_dir, tmp_path / "b"), capture_output=True,
                               text=True, env=env(), cwd=REPO, timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    resumed = step_losses(restarted.stderr)
    assert sorted(resumed) == list(range(resumed_from + 1, 17))
    assert resumed == {step: expected[step] for step in resumed}
    want, got = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert want.keys() == got.keys() and want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_sigterm_saves_a_checkpoint_and_exits_with_the_restart_code(data_dir, tmp_path):
    process = subprocess.Popen(
        train_command(data_dir, tmp_path, "--config.train.num_steps=100000"),
        stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    for line in process.stderr:
        if "step 6 loss" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == exit_codes.PREEMPTED, rest[-3000:]
    assert "stopped for a preemption notice (SIGTERM to worker 0) after step" in rest
    assert "Traceback" not in rest
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert int(latest.rsplit("-", 1)[1]) >= 6


CHECK_SECONDS = 1.0


def test_sigterm_is_acted_on_within_seconds_even_with_huge_steps_per_loop(data_dir, tmp_path):
    """A TPU-sized steps_per_loop must not delay the save: the host checks every
    preemption_check_seconds, so the checkpoint is written well inside a 30 s notice."""
    process = subprocess.Popen(
        train_command(data_dir, tmp_path, "--config.train.num_steps=1000000",
                      "--config.train.steps_per_loop=100000",
                      "--config.train.log_every_steps=100000",
                      "--config.train.checkpoint_every_steps=100000",
                      f"--config.train.preemption_check_seconds={CHECK_SECONDS}"),
        stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    for line in process.stderr:
        if "starting at step 0" in line:
            break
    time.sleep(4 * CHECK_SECONDS)  # well inside the first full-size host calls
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rest = process.stderr.read()
    process.wait(timeout=120)
    elapsed = time.monotonic() - sent
    assert process.returncode == exit_codes.PREEMPTED, rest[-3000:]
    saved_step = int(tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
                     .rsplit("-", 1)[1])
    assert 0 < saved_step < 100000
    # One host call (<= CHECK_SECONDS plus a step), the save and the process exit.
    assert elapsed < CHECK_SECONDS + 10, (elapsed, rest[-2000:])
