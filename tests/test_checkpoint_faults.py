"""Checkpoint faults: a broken newest checkpoint, a kill in the middle of a save, and the
temporary files that interrupted writes leave behind. Each test injects the fault."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from configs import tiny
from launch import checkpoints, exit_codes, trainer
from pipeline import dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(num_steps):
    config = tiny.get_config()
    config.train.num_steps = num_steps
    config.train.checkpoint_every_steps = 5
    config.train.steps_per_loop = 1
    config.train.deterministic = True
    return config


def train(config, workdir, data_dir):
    return trainer.train(config, workdir=str(workdir), data_dir=data_dir,
                         strategy=tf.distribute.get_strategy())


def checkpoint_file(workdir, step, kind):
    """The .index or .data-* file of ckpt-<step> in the chief's directory."""
    pattern = os.path.join(str(workdir), "checkpoints", f"ckpt-{step}.{kind}*")
    (path,) = tf.io.gfile.glob(pattern)
    return path


def truncate_data(workdir, step):
    path = checkpoint_file(workdir, step, "data")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def delete_index(workdir, step):
    os.remove(checkpoint_file(workdir, step, "index"))


# ---- 1. an unreadable newest checkpoint -------------------------------------------------

@pytest.mark.parametrize("damage", [truncate_data, delete_index])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous(data_dir, tmp_path, caplog,
                                                                 damage):
    first = train(tiny_config(10), tmp_path, data_dir)
    damage(tmp_path, 10)
    with caplog.at_level(logging.WARNING):
        resumed = train(tiny_config(15), tmp_path, data_dir)
    bad = os.path.join(str(tmp_path), "checkpoints", "ckpt-10")
    assert f"checkpoint {bad} cannot be read" in caplog.text
    assert "resuming from step 5, not from the newest checkpoint (step 10)" in caplog.text
    assert len(resumed) == 10  # steps 6..15
    # The exact batches and weights of step 6 onwards: as if ckpt-10 had never been written.
    assert [s.target_tokens for s in resumed[:5]] == [s.target_tokens for s in first[5:]]
    np.testing.assert_allclose([s.loss_sum for s in resumed[:5]],
                               [s.loss_sum for s in first[5:]], rtol=1e-5)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("ckpt-15")
    tf.train.load_checkpoint(bad).get_variable_to_shape_map()  # written again, whole


def test_a_hand_written_state_file_is_followed(data_dir, tmp_path):
    """A state file without timestamps (written by hand, copied) still names the newest."""
    train(tiny_config(10), tmp_path, data_dir)
    (tmp_path / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckpt-5"\n')
    assert len(train(tiny_config(12), tmp_path, data_dir)) == 7  # steps 6..12


def test_no_readable_checkpoint_is_one_error_naming_each(data_dir, tmp_path):
    train(tiny_config(10), tmp_path, data_dir)
    truncate_data(tmp_path, 10)
    delete_index(tmp_path, 5)
    with pytest.raises(trainer.TrainingError) as raised:
        train(tiny_config(15), tmp_path, data_dir)
    message = str(raised.value)
    assert f"no checkpoint in {tmp_path / 'checkpoints'} can be read" in message
    assert "ckpt-10: Read less bytes than requested" in message
    assert "ckpt-5: " in message and "--workdir" in message


class TwoWorkers(trainer._Fleet):
    """The chief's view of a two-worker job whose peer reports scripted values."""

    def __init__(self, peer_rows):
        super().__init__(None, worker_index=0, num_workers=2, local_replicas=1)
        self.peer_rows, self.tables = list(peer_rows), []

    def gather(self, values):
        table = np.array([values, self.peer_rows.pop(0)], np.float64)
        self.tables.append(table)
        return table


def restore_as_chief(config, workdir, data_dir, fleet):
    config = trainer.resolve_config(config, dataset.load_metadata(data_dir),
                                    strategy=tf.distribute.get_strategy())
    run = trainer.Trainer(config, data_dir=data_dir, strategy=tf.distribute.get_strategy(),
                          worker_index=0, num_workers=1)
    manager = checkpoints.manager(run.checkpoint, workdir=str(workdir), worker_index=0,
                                  is_chief=True, keep=5)
    step = trainer._restore(manager, run.checkpoint, fleet=fleet, workdir=str(workdir))
    return step, run


def test_every_worker_resumes_the_step_all_of_them_can_read(data_dir, tmp_path, caplog):
    """The chief reads ckpt-10 fine, but its peer cannot: both go back to ckpt-5."""
    train(tiny_config(10), tmp_path, data_dir)
    # Peer rows: its newest listed step, then the newest step it could read, then again.
    fleet = TwoWorkers([[10], [5], [5]])
    with caplog.at_level(logging.WARNING):
        step, run = restore_as_chief(tiny_config(15), tmp_path, data_dir, fleet)
    assert step == 5 and int(run.step.numpy()) == 5
    assert [t[:, 0].tolist() for t in fleet.tables] == [[10, 10], [10, 5], [5, 5]]
    assert "another worker cannot read its copy of the newer steps" in caplog.text


def test_a_worker_that_can_read_none_stops_every_worker(data_dir, tmp_path):
    train(tiny_config(5), tmp_path, data_dir)
    fleet = TwoWorkers([[5], [-1]])
    with pytest.raises(trainer.TrainingError,
                       match=r"no checkpoint in .*checkpoints/worker-1 can be read"):
        restore_as_chief(tiny_config(10), tmp_path, data_dir, fleet)


def test_two_real_workers_step_back_together_past_the_chiefs_broken_checkpoint(data_dir,
                                                                              tmp_path):
    """MultiWorkerMirrored on localhost: worker 1 reads its ckpt-20, the chief cannot."""
    def job(num_steps):
        command = [sys.executable, "-m", "launch.train", f"--config={REPO}/configs/tiny.py",
                   f"--data_dir={data_dir}", f"--workdir={tmp_path}",
                   "--strategy=multi_worker_mirrored", "--peer_timeout=10",
                   f"--config.train.num_steps={num_steps}",
                   "--config.train.checkpoint_every_steps=10"]
        return subprocess.run([sys.executable, "-m", "launch.local_cluster", "--workers=2",
                               "--", *command], capture_output=True, text=True, env=env(),
                              cwd=REPO, timeout=600)

    first = job(20)
    assert first.returncode == 0, first.stdout[-3000:]
    truncate_data(tmp_path, 20)
    second = job(30)
    assert second.returncode == 0, second.stdout[-3000:]
    lines = second.stdout.splitlines()
    chief = [line for line in lines if line.startswith("[worker 0]")]
    peer = [line for line in lines if line.startswith("[worker 1]")]
    fallback = "resuming from step 10, not from the newest checkpoint (step 20)"
    assert any(fallback in line and "ckpt-20: Read less bytes" in line for line in chief)
    assert any(fallback in line and "another worker cannot read" in line for line in peer)
    assert sum("resuming at step 10 of 30" in line for line in lines) == 2
    for copy in (tmp_path / "checkpoints", tmp_path / "checkpoints" / "worker-1"):
        assert tf.train.latest_checkpoint(str(copy)).endswith("ckpt-30")


# ---- the command line: a clean resume after SIGKILL mid-save; one clear error -----------

def train_command(data_dir, workdir, *extra):
    return [f"--config={REPO}/configs/tiny.py", f"--data_dir={data_dir}",
            f"--workdir={workdir}", "--config.train.num_steps=16",
            "--config.train.steps_per_loop=1", "--config.train.log_every_steps=1",
            "--config.train.checkpoint_every_steps=4", "--config.train.deterministic=True",
            "--config.model.dropout=0.1", *extra]


def env():
    values = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    values["PYTHONPATH"] = os.pathsep.join([REPO, values.get("PYTHONPATH", "")])
    return values


def run_train(argv):
    return subprocess.run([sys.executable, "-m", "launch.train", *argv], capture_output=True,
                          text=True, env=env(), cwd=REPO, timeout=300)


def step_losses(text):
    return {int(s): float(v) for s, v in re.findall(r"step (\d+) loss ([0-9.]+)", text)}


def model_weights(workdir):
    reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


# s2s-train with one save made slow: it stops inside the save of ckpt-8, after writing the
# shards to ckpt-8_temp/ ("shards") or after renaming them into place but before the
# `checkpoint` state file lists ckpt-8 ("state"), and waits there to be killed.
STALLED_TRAIN = """import sys, time
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.ops import gen_io_ops

def stall(function, prefix_of):
    def stalled(*args, **kwargs):
        if prefix_of(*args, **kwargs).endswith("ckpt-8"):
            sys.stderr.write("stalled inside the save of ckpt-8\\n")
            sys.stderr.flush()
            time.sleep(600)
        return function(*args, **kwargs)
    return stalled

if sys.argv.pop(1) == "shards":
    gen_io_ops.merge_v2_checkpoints = stall(
        gen_io_ops.merge_v2_checkpoints, lambda shards, prefix, **_: prefix.numpy().decode())
else:
    checkpoint_management.update_checkpoint_state_internal = stall(
        checkpoint_management.update_checkpoint_state_internal,
        lambda directory, model_checkpoint_path, **_: model_checkpoint_path)
from launch import train
train.run()
"""


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """(step losses, workdir) of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_train(train_command(data_dir, workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = step_losses(result.stderr)
    assert sorted(losses) == list(range(1, 17))
    return losses, workdir


@pytest.mark.parametrize("stage", ["shards", "state"])
def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(
        data_dir, tmp_path, reference, stage):
    expected, reference_dir = reference
    script = tmp_path / "stalled_train.py"
    script.write_text(STALLED_TRAIN)
    workdir = tmp_path / "work"
    victim = subprocess.Popen([sys.executable, str(script), stage,
                               *train_command(data_dir, workdir)],
                              stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    for line in victim.stderr:
        if "stalled inside the save of ckpt-8" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    ckpt_dir = workdir / "checkpoints"
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-4")
    left = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("ckpt-8"))
    assert left == (["ckpt-8_temp"] if stage == "shards"
                    else ["ckpt-8.data-00000-of-00001", "ckpt-8.index"])

    restarted = run_train(train_command(data_dir, workdir))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "cannot be read" not in restarted.stderr
    assert "resuming at step 4 of 16" in restarted.stderr
    resumed = step_losses(restarted.stderr)
    assert resumed == {step: expected[step] for step in range(5, 17)}
    want, got = model_weights(reference_dir), model_weights(workdir)
    assert want.keys() == got.keys() and want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert not (ckpt_dir / "ckpt-8_temp").exists()


def test_no_readable_checkpoint_exits_with_the_error_code_and_no_traceback(data_dir,
                                                                           tmp_path):
    config = tiny_config(5)
    config.model.dropout = 0.1
    train(config, tmp_path, data_dir)
    truncate_data(tmp_path, 5)
    result = run_train(train_command(data_dir, tmp_path))
    assert result.returncode == exit_codes.ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (f"s2s-train: error: no checkpoint in {tmp_path / 'checkpoints'} can be read "
            f"({tmp_path / 'checkpoints' / 'ckpt-5'}: Read less bytes than requested)"
            ) in result.stderr
    assert "step 6 loss" not in result.stderr


# ---- 4. temporary files of interrupted writes -------------------------------------------

def make(path, *, age_seconds, directory=False):
    """A file (or a directory holding one) last modified `age_seconds` ago."""
    if directory:
        path.mkdir(parents=True)
        inner = path / "part-00000-of-00001.index"
        inner.write_text("x")
        os.utime(inner, (time.time() - age_seconds,) * 2)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    os.utime(path, (time.time() - age_seconds,) * 2)
    return path


def test_stale_temps_are_removed_and_everything_else_stays(tmp_path):
    ckpt = tmp_path / "checkpoints"
    stale = [make(ckpt / "ckpt-8_temp", age_seconds=3600, directory=True),
             make(ckpt / f"checkpoint.tmp{'0123456789abcdef' * 2}", age_seconds=3600),
             make(tmp_path / "config.json.tmp-4242", age_seconds=3600),
             make(tmp_path / "eval" / "dev" / "metrics.jsonl.tmp-77", age_seconds=3600)]
    kept = [make(ckpt / "ckpt-12_temp", age_seconds=0, directory=True),  # this attempt's
            make(tmp_path / "config.json.tmp-99", age_seconds=-5),
            make(ckpt / "ckpt-4.index", age_seconds=3600),
            make(ckpt / "checkpoint", age_seconds=3600),
            make(tmp_path / "ckpt-3_temp", age_seconds=3600),  # not in a checkpoint dir
            make(tmp_path / "notes.tmp-draft", age_seconds=3600),
            make(ckpt / "my_ckpt_temp", age_seconds=3600),
            make(tmp_path / "backup.tmp-1", age_seconds=3600, directory=True),  # a user's dir
            make(ckpt / "worker-1" / "ckpt-8_temp", age_seconds=3600, directory=True)]
    removed = checkpoints.remove_stale_temps(str(tmp_path), started=time.time() - 1,
                                             worker_index=0, is_chief=True)
    assert sorted(removed) == sorted(str(p) for p in stale)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    # Worker 1 cleans its own copy, and only that.
    chiefs = make(tmp_path / "config.json.tmp-555", age_seconds=3600)
    removed = checkpoints.remove_stale_temps(str(tmp_path), started=time.time() - 1,
                                             worker_index=1, is_chief=False)
    assert removed == [str(ckpt / "worker-1" / "ckpt-8_temp")]
    assert chiefs.exists()


def test_trainer_start_removes_temps_of_earlier_attempts(data_dir, tmp_path):
    stale = [make(tmp_path / "checkpoints" / "ckpt-8_temp", age_seconds=600, directory=True),
             make(tmp_path / "config.json.tmp-123", age_seconds=600)]
    user_file = make(tmp_path / "checkpoints" / "README.txt", age_seconds=600)
    assert len(train(tiny_config(2), tmp_path, data_dir)) == 2
    assert not any(p.exists() for p in stale)
    assert user_file.read_text() == "x"
