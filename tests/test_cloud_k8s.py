"""Kubernetes manifests (launch/cloud/k8s.py): they parse and their arguments agree."""

import glob
import io
import json
import os
import shlex
from contextlib import redirect_stdout

import pytest
import yaml

import cli_errors
from launch import exit_codes
from launch.cloud import k8s, k8s_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--name=s2s-ende", "--image=img:7", "--data_dir=gs://b/data", "--workdir=gs://b/run"]


def dry_run(*args) -> tuple[str, list[dict]]:
    out = io.StringIO()
    with redirect_stdout(out):
        k8s.main([*BASE, *args, "--dry-run"])
    return out.getvalue(), list(yaml.safe_load_all(out.getvalue()))


def by_kind(documents, kind, role=None):
    return [d for d in documents if d["kind"] == kind
            and (role is None or d["metadata"]["labels"]["s2s-pipeline/role"] == role)]


def flag_values(argv, name) -> list[str]:
    return [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]


def pod(document) -> dict:
    spec = document["spec"]
    if document["kind"] == "TFJob":
        return spec["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    return spec["template"]["spec"]


def eval_argv(documents) -> list[str]:
    """The evaluator's s2s-evaluate argv (it runs after a wait step, inside sh -c)."""
    command = pod(by_kind(documents, "Job", "evaluate")[0])["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"]
    steps = [shlex.split(part) for part in command[2].split(" && ")]
    assert steps[0][:4] == ["python", "-m", "launch.cloud.files", "wait"]
    assert steps[0][4] == flag_values(steps[1], "workdir")[0] + "/config.json"
    return steps[1]


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_indexed_job_service_and_entrypoint_agree(replicas):
    text, documents = dry_run("--variant=indexed", f"--replicas={replicas}", "--gpus_per_worker=2",
                              "--gpu_type=nvidia-l4", "--override=train.num_steps=500")
    assert text.startswith("# kubectl apply -f -\n")
    [service], [job], [evaluator] = (by_kind(documents, "Service"),
                                     by_kind(documents, "Job", "train"),
                                     by_kind(documents, "Job", "evaluate"))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == replicas
    assert service["spec"]["clusterIP"] == "None"
    template = spec["template"]
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    assert set(service["spec"]["selector"].items()) <= set(template["metadata"]["labels"].items())
    assert not set(service["spec"]["selector"].items()) <= set(
        evaluator["spec"]["template"]["metadata"]["labels"].items())
    [trainer] = template["spec"]["containers"]
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert template["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    command = trainer["command"]
    separator = command.index("--")
    args = k8s_worker.parse_args(command[3:])
    assert (args.job_name, args.service, args.replicas) == (job["metadata"]["name"],
                                                            service["metadata"]["name"],
                                                            replicas)
    assert args.port == service["spec"]["ports"][0]["port"] == trainer["ports"][0]["containerPort"]
    train = command[separator + 1:]
    assert train[0] == "s2s-train" and "--config.train.num_steps=500" in train
    expected = "multi_worker_mirrored" if replicas > 1 else "mirrored"
    assert flag_values(train, "strategy") == [expected]
    for index in range(replicas):  # what each pod's entrypoint will export
        env = k8s_worker.worker_environment({"JOB_COMPLETION_INDEX": str(index)},
                                            job_name=args.job_name, service=args.service,
                                            replicas=args.replicas, port=args.port)
        if replicas == 1:
            assert "TF_CONFIG" not in env
            continue
        config = json.loads(env["TF_CONFIG"])
        assert len(config["cluster"]["worker"]) == spec["completions"]
        assert config["cluster"]["worker"][index] == (
            f"{job['metadata']['name']}-{index}.{template['spec']['subdomain']}:{args.port}")
    evaluate = eval_argv(documents)
    for name in ("workdir", "data_dir"):
        assert flag_values(evaluate, name) == flag_values(train, name) == [
            dict(a.split("=", 1) for a in BASE)[f"--{name}"]]
    assert {c["image"] for d in (job, evaluator) for c in pod(d)["containers"]} == {"img:7"}


def pod_failure_action(policy: dict, exit_code: int) -> str:
    """What a Job does with a pod that exited `exit_code` (first matching rule, as
    Kubernetes evaluates podFailurePolicy; `NotIn` never matches exit code 0)."""
    for rule in policy["rules"]:
        codes = rule.get("onExitCodes")
        if codes and exit_code != 0 and (exit_code in codes["values"]) == (
                codes["operator"] == "In"):
            return rule["action"]
    return "Count"


def test_indexed_job_replaces_interrupted_pods_and_fails_on_errors():
    _, documents = dry_run("--variant=indexed", "--replicas=2")
    [job] = by_kind(documents, "Job", "train")
    policy = job["spec"]["podFailurePolicy"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in policy["rules"]
    assert pod_failure_action(policy, exit_codes.PREEMPTED) == "Ignore"
    assert pod_failure_action(policy, exit_codes.KILLED) == "Ignore"
    assert pod_failure_action(policy, exit_codes.ERROR) == "FailJob"
    assert pod_failure_action(policy, 1) == "FailJob"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it


@pytest.mark.parametrize("replicas", [1, 3])
def test_jobset_restarts_the_whole_group_on_an_interruption(replicas):
    text, documents = dry_run(f"--replicas={replicas}", "--max_restarts=7")
    [jobset] = by_kind(documents, "JobSet")
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    spec = jobset["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": 7, "rules": [
        {"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]},
        {"action": "RestartJobSet"}]}
    [replicated] = spec["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert replicated["replicas"] == 1
    assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0
    assert job["completions"] == job["parallelism"] == replicas
    # An error fails the Job by the policy (-> FailJobSet); an interruption is counted,
    # which with backoffLimit 0 fails the Job otherwise (-> RestartJobSet, every pod).
    policy = job["podFailurePolicy"]
    assert pod_failure_action(policy, exit_codes.ERROR) == "FailJob"
    assert pod_failure_action(policy, exit_codes.PREEMPTED) == "Count"
    assert pod_failure_action(policy, exit_codes.KILLED) == "Count"
    pod_spec = job["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    command = pod_spec["containers"][0]["command"]
    args = k8s_worker.parse_args(command[3:])
    # JobSet names pod i `<jobset>-<replicatedJob>-<job index>-<i>.<subdomain>`.
    assert (args.job_name, args.service) == (f"s2s-ende-{replicated['name']}-0",
                                             spec["network"]["subdomain"])
    assert spec["network"]["enableDNSHostnames"] is True
    for index in range(replicas if replicas > 1 else 0):
        env = k8s_worker.worker_environment({"JOB_COMPLETION_INDEX": str(index)},
                                            job_name=args.job_name, service=args.service,
                                            replicas=args.replicas, port=args.port)
        hosts = json.loads(env["TF_CONFIG"])["cluster"]["worker"]
        assert hosts[index] == f"s2s-ende-workers-0-{index}.s2s-ende:{args.port}"
    assert not by_kind(documents, "Service")  # JobSet makes the headless service
    assert flag_values(eval_argv(documents), "workdir") == flag_values(command, "workdir")


def test_tfjob_variant_lets_the_operator_set_tf_config():
    _, documents = dry_run("--variant=tfjob", "--replicas=3", "--gpus_per_worker=1")
    [tfjob] = by_kind(documents, "TFJob")
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "ExitCode"
    [container] = pod(tfjob)["containers"]
    assert container["name"] == "tensorflow"
    command = container["command"]
    assert command[:5] == ["python", "-m", "launch.cloud.k8s_worker", "--keep_tf_config", "--"]
    train = command[5:]
    assert flag_values(train, "strategy") == ["multi_worker_mirrored"]
    evaluate = eval_argv(documents)
    assert flag_values(evaluate, "workdir") == flag_values(train, "workdir")
    assert flag_values(evaluate, "data_dir") == flag_values(train, "data_dir")
    assert not by_kind(documents, "Service")


def test_a_volume_claim_is_mounted_in_trainer_and_evaluator():
    _, documents = dry_run("--volume_claim=s2s-pvc", "--mount_path=/mnt/s2s")
    for document in by_kind(documents, "Job"):
        spec = pod(document)
        assert spec["volumes"] == [{"name": "s2s-data",
                                    "persistentVolumeClaim": {"claimName": "s2s-pvc"}}]
        assert spec["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/s2s"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "launch/cloud/k8s/*.yaml"))))
def test_checked_in_manifests_match_the_generator(path):
    text = open(path).read()
    [command] = [line[2:] for line in text.splitlines()
                 if line.startswith("# python -m launch.cloud.k8s ")]
    argv = shlex.split(command)[3:]
    out = io.StringIO()
    with redirect_stdout(out):
        k8s.main(argv)
    assert text.endswith(out.getvalue())
    assert list(yaml.safe_load_all(text))


def test_checked_in_manifests_exist_for_every_variant():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "launch/cloud/k8s/*.yaml"))}
    assert names == {"jobset.yaml", "indexed-job.yaml", "tfjob.yaml"}


@pytest.mark.parametrize("args, message", [
    (["--name=S2S_bad"], "must use only a-z, 0-9 and '-'"),
    (["--name=s2s", "--replicas=0"], "--replicas must be >= 1"),
    (["--name=s2s", "--override=no_equals"], "must look like section.field=value"),
])
def test_bad_input_is_one_line(args, message, capsys):
    cli_errors.assert_one_line_error(capsys, prog=k8s.PROG, main=k8s.main,
                                     argv=[*BASE[1:], *args, "--dry-run"], message=message)
