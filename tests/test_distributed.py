"""Multi-replica behaviour through CPU proxies, each in fresh processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_with_repo():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                         env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def test_mirrored_on_two_cpus_matches_one_device(data_dir):
    script = os.path.join(REPO, "tests", "mirrored_equivalence.py")
    result = subprocess.run([sys.executable, script, data_dir], capture_output=True,
                            text=True, env=env_with_repo(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    one, mirrored = runs["one_device"], runs["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert one["tokens"] == mirrored["tokens"]
    # Same global batch, loss divided by the global token count: equal up to float32
    # reduction order. Tolerance: 1e-5 relative on losses, 1e-5 absolute on weights.
    np.testing.assert_allclose(mirrored["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(one["weights"], mirrored["weights"]):
        np.testing.assert_allclose(b, a, atol=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_worker_multi_worker_mirrored_writes_one_checkpoint(data_dir, tmp_path):
    workers = [f"localhost:{free_port()}" for _ in range(2)]
    workdir = tmp_path / "work"
    processes = []
    for index in range(2):
        env = env_with_repo()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "launch.train", f"--config={REPO}/configs/tiny.py",
             f"--data_dir={data_dir}", f"--workdir={workdir}",
             "--strategy=multi_worker_mirrored", "--config.train.num_steps=4",
             "--config.train.checkpoint_every_steps=4"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "2 replicas, 2 workers" in outputs[0]
    chief_checkpoints = sorted(p.name for p in (workdir / "checkpoints").glob("ckpt-*.index"))
    assert chief_checkpoints == ["ckpt-4.index"]
    assert (workdir / "checkpoints" / "worker-1" / "ckpt-4.index").exists()
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 4
