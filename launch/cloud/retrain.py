"""Scheduled retraining as plain data: preprocess -> train -> evaluate -> publish-if-better.

The Airflow DAG (airflow_dag.py) and the Kubeflow pipeline (kfp_pipeline.py) both run these
steps, each as one command in the Dockerfile's image:

- preprocess: s2s-preprocess on Dataflow (launch/cloud/dataflow.py), waits for the job;
- train:      a Vertex AI CustomJob, chief + workers (launch/cloud/vertex.py --wait);
- evaluate:   a Vertex AI evaluator job scoring dev (exports the best) then test;
- publish:    launch/cloud/publish.py, which replaces the published model only if better.

Each run writes ROOT/runs/<run_id>/data and ROOT/runs/<run_id>/work. A retried step sees
the same run_id, so a retried training job resumes from its checkpoints.
"""

import dataclasses
import json
from typing import Sequence

from launch.cloud import cli, commands


@dataclasses.dataclass(frozen=True)
class RetrainSettings:
    """One retraining setup, read from a JSON file with these keys."""
    image: str  # the Dockerfile's image, e.g. us-docker.pkg.dev/P/s2s/s2s-pipeline:1.0
    project: str
    region: str
    root: str  # gs:// folder for data, workdirs and Dataflow temp files
    train: str  # s2s-preprocess --train SPEC (new data arrives here)
    publish_bucket: str  # where published models and latest.json live
    publish_prefix: str = ""
    dev: str = ""
    test: str = ""
    split_fractions: str = ""  # instead of dev/test: e.g. dev:0.05,test:0.05
    preprocess_flags: tuple[str, ...] = ()  # e.g. ["--vocab_size=16000"]
    dataflow_image: str = ""  # Dataflow worker image (target dataflow-worker); "": setup.py
    config: str = "configs/transformer.py"
    overrides: tuple[str, ...] = ()  # section.field=value
    workers: int = 1
    machine_type: str = "g2-standard-12"
    accelerator_type: str = "NVIDIA_L4"
    accelerator_count: int = 1
    spot: bool = False
    metric: str = "bleu"  # dev metric that decides publishing
    schedule: str = "@weekly"  # Airflow schedule (cron or preset)
    namespace: str = "default"  # Airflow: Kubernetes namespace of the step pods
    kubernetes_service_account: str = ""  # Airflow: pods' service account (Workload Identity)

    def __post_init__(self):
        cli.require_gcs("root", self.root)
        if self.workers < 1:
            raise cli.LaunchError(f"workers={self.workers} must be at least 1")


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    upstream: tuple[str, ...]


def load_settings(path: str) -> RetrainSettings:
    """Reads the JSON settings file; unknown or missing keys are named in the error."""
    if not path:
        raise cli.LaunchError("no retraining settings: point S2S_RETRAIN_SETTINGS (Airflow) or "
                              "--settings (Kubeflow) at a JSON file")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as error:
        raise cli.LaunchError(f"cannot read retraining settings {path}: {error}") from error
    return settings_from_dict(raw, source=path)


def settings_from_dict(raw: dict, *, source: str = "settings") -> RetrainSettings:
    fields = {f.name: f for f in dataclasses.fields(RetrainSettings)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise cli.LaunchError(f"{source}: unknown key(s) {', '.join(unknown)}")
    missing = sorted(name for name, f in fields.items()
                     if f.default is dataclasses.MISSING and name not in raw)
    if missing:
        raise cli.LaunchError(f"{source}: missing key(s) {', '.join(missing)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return RetrainSettings(**values)


def run_dirs(settings: RetrainSettings, run_id: str) -> tuple[str, str]:
    """(data_dir, workdir) of one run."""
    run = f"{settings.root.rstrip('/')}/runs/{run_id}"
    return f"{run}/data", f"{run}/work"


def vertex_flags(settings: RetrainSettings, *, data_dir: str, workdir: str) -> list[str]:
    flags = [f"--project={settings.project}", f"--region={settings.region}",
             f"--image={settings.image}", f"--data_dir={data_dir}", f"--workdir={workdir}",
             f"--machine_type={settings.machine_type}",
             f"--accelerator_type={settings.accelerator_type}",
             f"--accelerator_count={settings.accelerator_count}", "--wait"]
    return flags + (["--spot"] if settings.spot else [])


def steps(settings: RetrainSettings, *, run_id: str) -> list[Step]:
    """The four steps in order; `run_id` may be an orchestrator template/placeholder."""
    data_dir, workdir = run_dirs(settings, run_id)
    shipping = ([f"--sdk_container_image={settings.dataflow_image}"] if settings.dataflow_image
                else ["--setup_file=./setup.py"])
    sources = ([f"--split_fractions={settings.split_fractions}"] if settings.split_fractions
               else [f"--dev={settings.dev}", f"--test={settings.test}"])
    preprocess = ["python", "-m", "launch.cloud.dataflow", f"--project={settings.project}",
                  f"--region={settings.region}",
                  f"--temp_location={settings.root.rstrip('/')}/tmp",
                  f"--train={settings.train}", *sources, f"--output_dir={data_dir}", *shipping]
    if settings.preprocess_flags:
        preprocess += ["--", *settings.preprocess_flags]
    train = ["python", "-m", "launch.cloud.vertex", "train",
             *vertex_flags(settings, data_dir=data_dir, workdir=workdir),
             f"--config={settings.config}", f"--workers={settings.workers}",
             f"--display_name=s2s-train-{run_id}",
             *[f"--override={o}" for o in settings.overrides]]
    evaluate = ["python", "-m", "launch.cloud.vertex", "evaluate",
                *vertex_flags(settings, data_dir=data_dir, workdir=workdir), "--final",
                f"--display_name=s2s-evaluate-{run_id}"]
    publish = commands.publish_command(workdir=workdir, data_dir=data_dir,
                                       bucket=settings.publish_bucket,
                                       prefix=settings.publish_prefix)
    publish.append(f"--metric={settings.metric}")
    return [Step("preprocess", preprocess, ()), Step("train", train, ("preprocess",)),
            Step("evaluate", evaluate, ("train",)), Step("publish", publish, ("evaluate",))]


def step_names(settings: RetrainSettings) -> Sequence[str]:
    return [step.name for step in steps(settings, run_id="run")]
