"""The fleet's failure model on a local multi-process fleet (s2s-local-cluster).

Real MultiWorkerMirrored training of two workers on localhost: a preempted worker restarts
the whole group and ends where an uninterrupted run ends; a lost peer is an error within
the stated bound; workers that would resume different steps stop before training; and the
exit codes of the harness and of the pods' entrypoint say what happened to the job.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from launch import exit_codes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_TIMEOUT = 5  # s2s-train --peer_timeout in these tests


def env():
    values = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    values["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                            values.get("PYTHONPATH", "")])
    return values


def harness(*args, command):
    return [sys.executable, "-m", "launch.local_cluster", *args, "--", *command]


def train(data_dir, workdir, *extra):
    return [sys.executable, "-m", "launch.train", f"--config={REPO}/configs/tiny.py",
            f"--data_dir={data_dir}", f"--workdir={workdir}",
            "--strategy=multi_worker_mirrored", f"--peer_timeout={PEER_TIMEOUT}",
            "--config.train.num_steps=300", "--config.train.checkpoint_every_steps=100",
            "--config.train.deterministic=True", "--config.model.dropout=0.1", *extra]


def run(argv, timeout=300):
    return subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=timeout)


def start(argv):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(), cwd=REPO)


def worker_pids(line: str) -> dict[int, int]:
    """From `s2s-local-cluster: attempt 0: worker 0 pid 11, worker 1 pid 12`."""
    parts = line.split(": ", 2)[2].split(", ")
    return {int(p.split()[1]): int(p.split()[3]) for p in parts}


def rest_of_output(process) -> str:
    """Everything still to come, then the exit (communicate() would skip what the line
    reads above have buffered)."""
    rest = process.stdout.read()
    process.wait(timeout=60)
    return rest


def read_until(process, marker: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never printed:\n{''.join(lines)[-3000:]}")


def model_weights(checkpoint_dir):
    reader = tf.train.load_checkpoint(str(checkpoint_dir))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


def latest_step(checkpoint_dir) -> int:
    return int(tf.train.latest_checkpoint(str(checkpoint_dir)).rsplit("-", 1)[1])


def test_sigterm_to_one_worker_restarts_the_group_and_ends_like_an_uninterrupted_run(
        data_dir, tmp_path):
    reference = run(harness("--workers=2", command=train(data_dir, tmp_path / "a")))
    assert reference.returncode == 0, reference.stdout[-3000:]
    assert "attempt 1" not in reference.stdout

    process = start(harness("--workers=2", "--restart=group",
                            command=train(data_dir, tmp_path / "b")))
    lines = read_until(process, "attempt 0:")
    pids = worker_pids(lines[-1])
    lines += read_until(process, "step 100/300")
    os.kill(pids[1], signal.SIGTERM)
    out = "".join(lines) + rest_of_output(process)
    assert process.returncode == 0, out[-3000:]
    assert f"worker 1 (pid {pids[1]}) exited {exit_codes.PREEMPTED}" in out
    assert f"worker 0 (pid {pids[0]}) exited {exit_codes.PREEMPTED}" in out
    assert "stopped for a preemption notice (SIGTERM to worker 1)" in out
    assert "restarting the whole group (restart 1 of 3)" in out
    assert "job finished after 1 restart(s)" in out
    resumed = [line for line in out.splitlines() if "resuming at step" in line]
    assert len(resumed) == 2 and len({line.split("resuming at step")[1] for line in resumed}) == 1

    want, got = (model_weights(tmp_path / "a" / "checkpoints"),
                 model_weights(tmp_path / "b" / "checkpoints"))
    assert want.keys() == got.keys() and want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP],
                         ids=["killed", "frozen_like_a_lost_node"])
def test_a_lost_peer_is_an_error_within_the_peer_timeout(data_dir, tmp_path, fault):
    process = start(harness("--workers=2", "--restart=never", "--stop_grace=5",
                            command=train(data_dir, tmp_path,
                                          "--config.train.num_steps=100000")))
    lines = read_until(process, "attempt 0:")
    pids = worker_pids(lines[-1])
    lines += read_until(process, "step 100/100000")
    os.kill(pids[1], fault)
    lost_at = time.monotonic()
    for line in process.stdout:
        lines.append(line)
        if f"worker 0 (pid {pids[0]}) exited" in line:
            detected_after = time.monotonic() - lost_at
            break
    out = "".join(lines) + rest_of_output(process)
    assert process.returncode == exit_codes.PREEMPTED, out[-3000:]
    assert f"worker 0 (pid {pids[0]}) exited {exit_codes.PREEMPTED}" in out
    assert "s2s-train: error: lost contact with a peer worker" in out
    assert "Traceback" not in out
    # The bound: --peer_timeout for a silent peer (a broken connection is seen at once),
    # the coordination service's next health check, one host call and the exit; twice
    # the timeout plus 10 s leaves room for a loaded CI machine.
    assert detected_after < 2 * PEER_TIMEOUT + 10, out[-3000:]
    assert "job interrupted and not restarted" in out


@pytest.mark.parametrize("index", [0, 1], ids=["leader", "worker"])
def test_a_peer_that_never_starts_ends_the_wait_after_start_timeout(data_dir, tmp_path,
                                                                   index):
    """A lone worker of a two-worker job: TF would wait for its peer forever."""
    ports = [free_port(), free_port()]
    config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
              "task": {"type": "worker", "index": index}}
    began = time.monotonic()
    result = subprocess.run(train(data_dir, tmp_path, "--start_timeout=5"), capture_output=True,
                            text=True, env={**env(), "TF_CONFIG": json.dumps(config)},
                            cwd=REPO, timeout=120)
    assert exit_codes.normalize(result.returncode) == exit_codes.KILLED, result.stderr[-3000:]
    assert exit_codes.is_restartable(result.returncode)
    assert "not every worker started within --start_timeout=5 s" in result.stderr
    assert time.monotonic() - began < 60
    assert not (tmp_path / "checkpoints").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_workers_resuming_different_steps_stop_before_any_training_step(data_dir, tmp_path):
    first = run(harness("--workers=2",
                        command=train(data_dir, tmp_path, "--config.train.num_steps=200")))
    assert first.returncode == 0, first.stdout[-3000:]
    checkpoints = tmp_path / "checkpoints"
    worker_copy = checkpoints / "worker-1"
    assert latest_step(checkpoints) == latest_step(worker_copy) == 200

    # A stale copy: worker 1's newest checkpoint is an older step than the chief's.
    for path in worker_copy.glob("ckpt-200.*"):
        path.unlink()
    (worker_copy / "checkpoint").write_text('model_checkpoint_path: "ckpt-100"\n'
                                            'all_model_checkpoint_paths: "ckpt-100"\n')
    stale = run(harness("--workers=2", command=train(data_dir, tmp_path)))
    assert stale.returncode == exit_codes.ERROR, stale.stdout[-3000:]
    assert ("workers would resume from different checkpoints (worker 0: step 200; "
            "worker 1: step 100)") in stale.stdout
    assert "job failed with exit code 2" in stale.stdout

    # A deleted copy.
    for path in worker_copy.iterdir():
        path.unlink()
    worker_copy.rmdir()
    deleted = run(harness("--workers=2", command=train(data_dir, tmp_path)))
    assert deleted.returncode == exit_codes.ERROR, deleted.stdout[-3000:]
    assert f"worker 0: step 200; worker 1: no checkpoint in {worker_copy}" in deleted.stdout
    assert "Traceback" not in stale.stdout + deleted.stdout
    assert latest_step(checkpoints) == 200  # no step ran
    assert "step 201" not in stale.stdout + deleted.stdout


# ---- exit codes, with stand-in workers (fast) -------------------------------------------

def fake_worker(script: str) -> list[str]:
    """A worker that runs `script` with `index` (its TF_CONFIG index) and `attempt` set."""
    prelude = ("import json, os, signal, sys, time\n"
               "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
               "attempt = int(os.environ['S2S_RESTART_ATTEMPT'])\n")
    return [sys.executable, "-c", prelude + script]


@pytest.mark.parametrize("script,restart,code,message", [
    ("sys.exit(0)", "group", 0, "job finished"),
    ("sys.exit(143 if attempt == 0 else 0)", "group", 0, "job finished after 1 restart(s)"),
    ("sys.exit(143)", "group", 143, "restarts used: 2 of 2"),
    ("sys.exit(143)", "never", 143, "restarts used: 0 of 0"),
    ("sys.exit(2 if index == 1 else 143)", "group", 2, "a restart will not fix"),
    ("os.kill(os.getpid(), signal.SIGKILL) if index == 1 and attempt == 0 else sys.exit(0)",
     "group", 0, "worker 1 (pid"),
    ("sys.exit(0) if index == 0 else time.sleep(60)", "group", 143,
     "stopping the workers still running"),
])
def test_harness_exit_code_policy(script, restart, code, message):
    result = run(harness("--workers=2", f"--restart={restart}", "--max_restarts=2",
                         "--stop_grace=2", command=fake_worker(script)), timeout=120)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout


def test_harness_restart_attempts_get_fresh_ports_and_tf_config():
    script = ("print('CONFIG', os.environ['TF_CONFIG']); sys.exit(143 if attempt == 0 else 0)")
    result = run(harness("--workers=2", command=fake_worker(script)), timeout=60)
    assert result.returncode == 0, result.stdout
    configs = [json.loads(line.split("CONFIG ", 1)[1]) for line in result.stdout.splitlines()
               if "CONFIG " in line]
    assert len(configs) == 4
    assert sorted(c["task"]["index"] for c in configs) == [0, 0, 1, 1]
    assert all(len(c["cluster"]["worker"]) == 2 for c in configs)


def test_harness_passes_sigterm_to_every_worker_and_exits_143():
    script = ("signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
              "print('ready', flush=True)\ntime.sleep(60)\nsys.exit(0)")
    process = start(harness("--workers=2", command=fake_worker(script)))
    seen, lines = set(), []
    while len(seen) < 2:
        lines.append(process.stdout.readline())
        assert lines[-1], "".join(lines)
        seen |= {m for m in ("[worker 0] ready", "[worker 1] ready") if m in lines[-1]}
    process.send_signal(signal.SIGTERM)
    out = "".join(lines) + rest_of_output(process)
    assert process.returncode == 143, out
    assert out.count("exited 143") == 2 and "attempt 1" not in out


def test_bad_arguments_are_one_line():
    result = run(harness("--workers=0", command=["true"]), timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("s2s-local-cluster: error: ") and \
        result.stderr.count("\n") == 1
    missing = run(harness("--workers=1", command=["no-such-command-s2s"]), timeout=60)
    assert missing.returncode == 2
    assert "no-such-command-s2s is not installed" in missing.stderr


@pytest.mark.parametrize("child,code", [
    ("sys.exit(0)", 0), ("sys.exit(143)", 143), ("sys.exit(2)", 2),
    ("os.kill(os.getpid(), signal.SIGKILL)", 137),
])
def test_k8s_worker_reports_the_trainers_code(child, code):
    script = "import os, signal, sys\n" + child
    result = run([sys.executable, "-m", "launch.cloud.k8s_worker", "--keep_tf_config", "--",
                  sys.executable, "-c", script], timeout=60)
    assert result.returncode == code, result.stderr
