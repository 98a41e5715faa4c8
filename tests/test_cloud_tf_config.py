"""TF_CONFIG for Indexed Job pods (launch/cloud/tf_config.py) and their entrypoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from launch.cloud import cli, k8s_worker, tf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
def test_every_index_gets_its_own_task_in_the_same_cluster(replicas):
    hosts = tf_config.indexed_job_hosts(job_name="s2s", service="s2s-workers",
                                        replicas=replicas, port=2222)
    assert hosts[0] == "s2s-0.s2s-workers:2222" and len(set(hosts)) == replicas
    configs = [tf_config.build(hosts=hosts, index=i) for i in range(replicas)]
    for index, config in enumerate(configs):
        assert config == {"cluster": {"worker": hosts},
                          "task": {"type": "worker", "index": index}}
        assert hosts[index] == f"s2s-{index}.s2s-workers:2222"


def test_an_index_outside_the_cluster_is_refused():
    hosts = tf_config.indexed_job_hosts(job_name="s2s", service="svc", replicas=2)
    with pytest.raises(ValueError, match="outside 0..1"):
        tf_config.build(hosts=hosts, index=2)
    with pytest.raises(ValueError):
        tf_config.indexed_job_hosts(job_name="s2s", service="svc", replicas=0)


def test_tensorflow_reads_the_cluster_we_write(monkeypatch):
    import tensorflow as tf
    hosts = tf_config.indexed_job_hosts(job_name="s2s", service="svc", replicas=3)
    for index in range(3):
        monkeypatch.setenv("TF_CONFIG", tf_config.dumps(tf_config.build(hosts=hosts,
                                                                         index=index)))
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        assert (resolver.task_type, resolver.task_id) == ("worker", index)
        assert resolver.cluster_spec().as_dict() == {"worker": hosts}


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_worker_environment_follows_job_completion_index(index):
    env = k8s_worker.worker_environment({"JOB_COMPLETION_INDEX": str(index), "KEEP": "1"},
                                        job_name="s2s", service="svc", replicas=4, port=2222)
    assert env["KEEP"] == "1"
    config = json.loads(env["TF_CONFIG"])
    assert config["task"] == {"type": "worker", "index": index}
    assert len(config["cluster"]["worker"]) == 4


def test_worker_environment_rejects_bad_indexes_and_skips_single_workers():
    for environ in ({}, {"JOB_COMPLETION_INDEX": "x"}, {"JOB_COMPLETION_INDEX": "4"}):
        with pytest.raises(cli.LaunchError, match="JOB_COMPLETION_INDEX"):
            k8s_worker.worker_environment(environ, job_name="s2s", service="svc", replicas=4,
                                          port=2222)
    env = k8s_worker.worker_environment({"JOB_COMPLETION_INDEX": "0"}, job_name="s2s",
                                        service="svc", replicas=1, port=2222)
    assert "TF_CONFIG" not in env


def worker(*args, env_extra=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "launch.cloud.k8s_worker", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_entrypoint_runs_the_command_with_tf_config():
    process = worker("--job_name=s2s", "--service=svc", "--replicas=3", "--", sys.executable,
                     "-c", "import os; print(os.environ['TF_CONFIG'])",
                     env_extra={"JOB_COMPLETION_INDEX": "2"})
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert json.loads(out) == tf_config.build(
        hosts=["s2s-0.svc:2222", "s2s-1.svc:2222", "s2s-2.svc:2222"], index=2)


def test_entrypoint_passes_the_exit_code_and_reports_bad_input_in_one_line():
    process = worker("--job_name=s2s", "--service=svc", "--replicas=2", "--", sys.executable,
                     "-c", "raise SystemExit(3)", env_extra={"JOB_COMPLETION_INDEX": "1"})
    process.communicate(timeout=60)
    assert process.returncode == 3
    env = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
    result = subprocess.run([sys.executable, "-m", "launch.cloud.k8s_worker", "--job_name=s2s",
                             "--service=svc", "--replicas=2", "--", "true"],
                            capture_output=True, text=True, env={**env, "PYTHONPATH": REPO})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Indexed Job" in result.stderr


def test_sigterm_reaches_the_trainer_and_the_pod_reports_preemption(tmp_path):
    """The trainer saves and exits 143 on SIGTERM; the pod passes that on (not done)."""
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    trainer = (f"import signal, sys, time, pathlib\n"
               f"def save(*_):\n"
               f"    pathlib.Path({str(saved)!r}).write_text('checkpoint'); sys.exit(143)\n"
               f"signal.signal(signal.SIGTERM, save)\n"
               f"pathlib.Path({str(ready)!r}).write_text('')\n"
               f"time.sleep(60)\n")
    process = worker("--keep_tf_config", "--", sys.executable, "-c", trainer)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert saved.read_text() == "checkpoint"
    assert process.returncode == 128 + signal.SIGTERM == k8s_worker_preempted_code()


def k8s_worker_preempted_code() -> int:
    from launch import exit_codes
    return exit_codes.PREEMPTED
