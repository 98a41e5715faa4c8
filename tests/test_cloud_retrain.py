"""Scheduled retraining: the step list, the Airflow DAG and the Kubeflow pipeline."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from launch.cloud import cli, dataflow, publish, retrain, vertex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ["preprocess", "train", "evaluate", "publish"]
SETTINGS = {"image": "us-docker.pkg.dev/p/s2s/s2s-pipeline:1", "project": "p",
            "region": "us-central1", "root": "gs://b/retrain", "train": "tsv:gs://b/raw.tsv",
            "split_fractions": "dev:0.05,test:0.05", "publish_bucket": "models",
            "publish_prefix": "ende", "preprocess_flags": ["--vocab_size=16000"],
            "workers": 2, "accelerator_count": 2, "overrides": ["train.num_steps=30000"]}


@pytest.fixture
def settings_file(tmp_path):
    path = tmp_path / "retrain.json"
    path.write_text(json.dumps(SETTINGS))
    return str(path)


def flag(argv, name):
    [value] = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return value


def test_steps_run_in_order_and_share_one_run_directory():
    steps = retrain.steps(retrain.settings_from_dict(SETTINGS), run_id="r1")
    assert [s.name for s in steps] == ORDER
    assert [s.upstream for s in steps] == [(), ("preprocess",), ("train",), ("evaluate",)]
    preprocess, train, evaluate, publish_step = (s.command for s in steps)
    data_dir, workdir = "gs://b/retrain/runs/r1/data", "gs://b/retrain/runs/r1/work"
    # Each step's arguments are what its own launcher parses, and they agree.
    pre_args = dataflow.parse_args(preprocess[3:])
    assert (pre_args.output_dir, pre_args.preprocess_flags) == (data_dir, ["--vocab_size=16000"])
    assert pre_args.temp_location == "gs://b/retrain/tmp"
    bodies = {}
    for name, argv in (("train", train), ("evaluate", evaluate)):
        args = vertex.parse_args(argv[3:])
        assert (args.role, args.wait, args.image) == (name, True, SETTINGS["image"])
        bodies[name] = vertex.body_from_args(args)
    [chief, workers] = bodies["train"]["jobSpec"]["workerPoolSpecs"]
    assert workers["replicaCount"] == 1
    train_command = chief["containerSpec"]["command"]
    assert "--config.train.num_steps=30000" in train_command
    assert flag(train_command, "strategy") == "multi_worker_mirrored"
    eval_command = bodies["evaluate"]["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["command"]
    pub_args = publish.parse_args(publish_step[3:])
    assert (flag(train_command, "data_dir"), flag(train_command, "workdir")) == (data_dir, workdir)
    assert f"--workdir={workdir} --data_dir={data_dir} --split=dev" in eval_command[2]
    assert f"--workdir={workdir} --data_dir={data_dir} --split=test" in eval_command[2]
    assert (pub_args.workdir, pub_args.data_dir, pub_args.bucket, pub_args.prefix) == (
        workdir, data_dir, "models", "ende")


@pytest.mark.parametrize("change, message", [
    ({"colour": "blue"}, "unknown key(s) colour"),
    ({"project": None}, "missing key(s) project"),
    ({"root": "/local"}, "root='/local' must be a gs:// path"),
])
def test_bad_settings_are_named(change, message):
    raw = {k: v for k, v in {**SETTINGS, **change}.items() if v is not None}
    with pytest.raises(cli.LaunchError) as error:
        retrain.settings_from_dict(raw)
    assert message in str(error.value)


def test_the_example_settings_file_loads():
    settings = retrain.load_settings(os.path.join(REPO, "launch/cloud/retrain.example.json"))
    assert settings.workers == 2 and settings.overrides == ("train.num_steps=50000",)
    assert [s.name for s in retrain.steps(settings, run_id="r")] == ORDER


def test_missing_settings_file_is_a_clear_error(tmp_path):
    with pytest.raises(cli.LaunchError, match="S2S_RETRAIN_SETTINGS"):
        retrain.load_settings("")
    with pytest.raises(cli.LaunchError, match="cannot read retraining settings"):
        retrain.load_settings(str(tmp_path / "absent.json"))


AIRFLOW_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="launch/cloud/airflow_dag.py", safe_mode=False)
dag = bag.dags.get("s2s_retrain")
tasks = [] if dag is None else [
    {"id": t.task_id, "upstream": sorted(t.upstream_task_ids), "image": t.image,
     "command": list(t.cmds) + list(t.arguments), "namespace": t.namespace,
     "rendered": t.render_template(list(t.arguments), {"ts_nodash": "20260105T010203"})}
    for t in dag.topological_sort()]
print(json.dumps({"errors": {k: v[-300:] for k, v in bag.import_errors.items()},
                  "schedule": None if dag is None else str(dag.schedule), "tasks": tasks}))
"""


def airflow_probe(tmp_path, settings_path: str) -> dict:
    """Loads the DAG file the way Airflow's DAG processor does, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": REPO, "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "S2S_RETRAIN_SETTINGS": settings_path}
    result = subprocess.run([sys.executable, "-c", AIRFLOW_PROBE], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_airflow_dag_imports_with_the_steps_in_order(tmp_path, settings_file):
    probe = airflow_probe(tmp_path, settings_file)
    assert probe["errors"] == {}
    assert probe["schedule"] == "@weekly"
    tasks = probe["tasks"]
    assert [t["id"] for t in tasks] == ORDER
    assert [t["upstream"] for t in tasks] == [[], ["preprocess"], ["train"], ["evaluate"]]
    expected = retrain.steps(retrain.settings_from_dict(SETTINGS),
                             run_id="{{ ts_nodash | lower }}")
    for task, step in zip(tasks, expected):
        assert task["image"] == SETTINGS["image"] and task["command"] == step.command
    rendered = tasks[-1]["rendered"]
    assert "--workdir=gs://b/retrain/runs/20260105t010203/work" in rendered


def test_airflow_reports_missing_settings_as_an_import_error(tmp_path):
    probe = airflow_probe(tmp_path, "")
    [message] = probe["errors"].values()
    assert "no retraining settings" in message and probe["tasks"] == []


def test_kfp_pipeline_compiles_to_the_same_steps(tmp_path, settings_file):
    from launch.cloud import kfp_pipeline
    output = tmp_path / "pipeline.yaml"
    kfp_pipeline.main([f"--settings={settings_file}", f"--output={output}"])
    spec = yaml.safe_load(output.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert {t["taskInfo"]["name"] for t in tasks.values()} == set(ORDER)
    by_name = {t["taskInfo"]["name"]: t for t in tasks.values()}
    placeholder = "{{$.inputs.parameters['run_id']}}"
    expected = retrain.steps(retrain.settings_from_dict(SETTINGS), run_id=placeholder)
    key_of = {t["taskInfo"]["name"]: key for key, t in tasks.items()}
    for step in expected:
        task = by_name[step.name]
        assert task.get("dependentTasks", []) == [key_of[u] for u in step.upstream]
        assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == (
            "{{$.pipeline_job_uuid}}")
        assert not task["cachingOptions"].get("enableCache", False)
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["image"] == SETTINGS["image"]
        assert container["command"] + container["args"] == step.command
