"""Cloud TPU VM launcher (launch/cloud/tpu_vm.py): --dry-run output and the rerun path."""

import io
import json
import os
import shlex
import stat
import sys
from contextlib import redirect_stdout

import pytest

import cli_errors
from launch.cloud import tpu_vm

ARGS = ["--name=s2s-tpu", "--project=proj", "--zone=us-west4-a",
        "--image=us-docker.pkg.dev/proj/s2s/s2s-pipeline:tpu",
        "--data_dir=gs://b/data", "--workdir=gs://b/run"]


def dry_run(*args) -> list[str]:
    out = io.StringIO()
    with redirect_stdout(out):
        tpu_vm.main([*args, "--dry-run"])
    return out.getvalue().splitlines()


def remote_command(line: str, *, worker: str = "all") -> str:
    argv = shlex.split(line)
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    assert f"--worker={worker}" in argv
    [command] = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
    return command


def test_up_creates_a_queued_resource_installs_and_trains_on_every_host():
    create, poll, install, train = dry_run("up", *ARGS, "--spot", "--override=train.num_steps=7")
    assert shlex.split(create) == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "s2s-tpu",
        "--node-id=s2s-tpu", "--project=proj", "--zone=us-west4-a",
        "--accelerator-type=v5litepod-8", "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
    assert poll.startswith("# then poll until this prints ACTIVE: gcloud compute tpus "
                           "queued-resources describe s2s-tpu")
    assert remote_command(install) == (
        "sudo gcloud auth configure-docker us-docker.pkg.dev --quiet && "
        "sudo docker pull us-docker.pkg.dev/proj/s2s/s2s-pipeline:tpu")
    script = remote_command(train)
    run = shlex.split(script.split("; ", 1)[1].split(" && ")[0])
    assert run[:7] == ["sudo", "docker", "run", "-d", "--name=s2s-train", "--net=host",
                       "--privileged"]
    assert run[7:] == ["us-docker.pkg.dev/proj/s2s/s2s-pipeline:tpu", "s2s-train",
                       "--config=configs/transformer.py", "--data_dir=gs://b/data",
                       "--workdir=gs://b/run", "--strategy=tpu", "--tpu=local",
                       "--config.train.num_steps=7"]
    assert script.startswith("sudo docker rm -f s2s-train")  # a rerun replaces the old one


def test_a_multi_host_slice_runs_one_client_on_worker_0():
    """Cloud TPU's TF2 layout for pod slices: the TF pod runtime on every host, one client
    on worker 0 with TPU_LOAD_LIBRARY=0 and TPUClusterResolver(tpu=NAME)."""
    create, _, install, train = dry_run("up", *ARGS, "--accelerator_type=v5litepod-16")
    assert "--runtime-version=tpu-vm-tf-2.21.0-pod-pjrt" in shlex.split(create)
    assert "docker pull" in remote_command(install, worker="0")
    script = remote_command(train, worker="0")
    run = shlex.split(script.split("; ", 1)[1].split(" && ")[0])
    assert run[7:9] == ["--env=TPU_LOAD_LIBRARY=0", "us-docker.pkg.dev/proj/s2s/s2s-pipeline:tpu"]
    assert run[-2:] == ["--strategy=tpu", "--tpu=s2s-tpu"]
    assert script.endswith(f"exit $(sudo docker wait {tpu_vm.CONTAINER})")


def test_an_unknown_accelerator_type_is_one_line(capsys):
    cli_errors.assert_one_line_error(capsys, prog=tpu_vm.PROG, main=tpu_vm.main,
                                     argv=["up", *ARGS, "--accelerator_type=v9-8", "--dry-run"],
                                     message="--accelerator_type='v9-8' is not one of")


def test_train_on_an_existing_tpu_and_down():
    install, train = dry_run("train", *ARGS)
    assert "docker pull" in remote_command(install) and "s2s-train" in remote_command(train)
    assert dry_run("down", *ARGS[:3]) == [
        "gcloud compute tpus queued-resources delete s2s-tpu --project=proj --zone=us-west4-a "
        "--force --quiet"]


@pytest.mark.parametrize("args, message", [
    (["up", *ARGS[:3]], "up needs --image, --data_dir and --workdir"),
    (["up", *ARGS[:5], "--workdir=/tmp/run"], "--workdir='/tmp/run' must be a gs:// path"),
])
def test_bad_input_is_one_line(args, message, capsys):
    cli_errors.assert_one_line_error(capsys, prog=tpu_vm.PROG, main=tpu_vm.main,
                                     argv=[*args, "--dry-run"], message=message)


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """A `gcloud` on PATH that logs its argv and answers `describe` from a list of states."""
    log, states = tmp_path / "calls.jsonl", tmp_path / "states.json"
    script = tmp_path / "bin" / "gcloud"
    script.parent.mkdir()
    script.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
    states = json.load(open({str(states)!r}))
    state = states.pop(0) if len(states) > 1 else states[0]
    json.dump(states, open({str(states)!r}, "w"))
    if state == "NOT_FOUND":
        sys.exit(1)
    print(state)
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")

    def calls(state_sequence):
        states.write_text(json.dumps(state_sequence))
        return lambda: [json.loads(line)[3] if json.loads(line)[0] == "compute" else "?"
                        for line in log.read_text().splitlines()]
    return calls


def test_rerun_after_preemption_recreates_the_tpu_and_resumes(fake_gcloud, monkeypatch):
    monkeypatch.setattr(tpu_vm.time, "sleep", lambda _: None)
    actions = fake_gcloud(["SUSPENDED", "WAITING_FOR_RESOURCES", "ACTIVE"])
    tpu_vm.main(["up", *ARGS])
    assert actions() == ["describe", "delete", "create", "describe", "describe", "ssh", "ssh"]


def test_up_on_an_active_tpu_only_installs_and_trains(fake_gcloud):
    actions = fake_gcloud(["ACTIVE"])
    tpu_vm.main(["up", *ARGS])
    assert actions() == ["describe", "describe", "ssh", "ssh"]
