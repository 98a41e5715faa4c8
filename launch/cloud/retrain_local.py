"""Retraining on this machine: the same four steps as the cloud loop, as local processes.

    python -m launch.cloud.retrain_local run --settings=retrain.local.json [--run_id=ID]
    python -m launch.cloud.retrain_local step train --settings=... --run_id=ID  # one step
    python -m launch.cloud.retrain_local published --settings=...               # history

--dry-run prints the commands of `run` or `step` and runs nothing (nor records the base).

Each run writes ROOT/runs/<run_id>/{data,work} and publishes into PUBLISH_DIR, a local
directory laid out as the cloud bucket (launch/cloud/publish.py; TF Serving serves
PUBLISH_DIR/models). A run builds on the model published when its first step started
(recorded in ROOT/runs/<run_id>/base.json), so a retried step sees the same inputs:

- preprocess: s2s-preprocess with the published tokenizer (its warm_start/ bundle), so
  token ids stay; a rerun of a finished step with the same inputs does nothing;
- train: s2s-train warm-started from the published model (`warm_start: false` trains
  from scratch); a retry resumes from the run's checkpoints, and a second trainer on the
  workdir is refused;
- evaluate: s2s-evaluate on the dev split, which exports the scored checkpoint;
- publish: only if strictly better on the pinned dev set. The dev file is checked
  against `dev_sha256` before anything runs, and its sha256 is recorded with the
  published model, so models are only compared on the same data.

The Airflow DAG (airflow_dag.py) and the Kubeflow pipeline (kfp_pipeline.py) run the
`step` command of each step when the settings file says "backend": "local".
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Sequence

from launch.cloud import cli

PROG = "python -m launch.cloud.retrain_local"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = ("preprocess", "train", "evaluate", "publish")
UPSTREAM = {"preprocess": (), "train": ("preprocess",), "evaluate": ("train",),
            "publish": ("evaluate",)}


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """One local retraining setup, read from a JSON file with these keys (and
    "backend": "local")."""
    root: str  # runs/<run_id>/{data,work} go here
    publish_dir: str  # the local publish destination (latest.json, models/<N>/)
    train: tuple[str, ...]  # s2s-preprocess --train SPECs of this run's data
    dev: str  # the pinned dev set: tsv:PATH
    dev_sha256: str  # its sha256; a run refuses another dev file
    config: str = "configs/transformer.py"  # beside the settings file, else in the repo
    overrides: tuple[str, ...] = ()  # section.field=value
    preprocess_flags: tuple[str, ...] = ()  # e.g. ["--vocab_size=200"]
    metric: str = "bleu"  # dev metric that decides publishing (wer/per: lower is better)
    warm_start: bool = True  # start from the published model when there is one
    schedule: str = "@weekly"  # Airflow schedule
    backend: str = "local"

    def __post_init__(self):
        if self.backend != "local":
            raise cli.LaunchError(f"backend={self.backend!r}: this file is for the cloud "
                                  "loop (launch/cloud/retrain.py)")
        if not self.dev.startswith("tsv:"):
            raise cli.LaunchError(f"dev={self.dev!r}: the pinned dev set must be tsv:PATH")


def is_local(path: str) -> bool:
    """Whether a retraining settings file asks for the local backend."""
    try:
        with open(path) as f:
            return json.load(f).get("backend") == "local"
    except (OSError, ValueError, AttributeError):
        return False


def load_settings(path: str) -> LocalSettings:
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as error:
        raise cli.LaunchError(f"cannot read retraining settings {path}: {error}") from error
    fields = {f.name: f for f in dataclasses.fields(LocalSettings)}
    unknown = sorted(set(raw) - set(fields))
    missing = sorted(n for n, f in fields.items()
                     if f.default is dataclasses.MISSING and n not in raw)
    if unknown or missing:
        raise cli.LaunchError(f"{path}: " + "; ".join(
            part for part in (f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                              f"missing key(s) {', '.join(missing)}" if missing else "")
            if part))
    if isinstance(raw["train"], str):
        raw["train"] = [raw["train"]]
    base = os.path.dirname(os.path.abspath(path))
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    # Relative paths are relative to the settings file: orchestrators run steps elsewhere.
    for key in ("root", "publish_dir"):
        values[key] = os.path.join(base, values[key])
    values["train"] = tuple(absolute_spec(spec, base=base) for spec in values["train"])
    values["dev"] = absolute_spec(values["dev"], base=base)
    if "config" in values and not os.path.isabs(values["config"]):
        beside = os.path.join(base, values["config"])
        values["config"] = beside if os.path.exists(beside) else os.path.join(REPO,
                                                                              values["config"])
    return LocalSettings(**values)


def absolute_spec(spec: str, *, base: str) -> str:
    """tsv:PATH and text:SRC,TGT with their paths made absolute; other specs unchanged."""
    kind, _, rest = spec.partition(":")
    if kind not in ("tsv", "text") or not rest:
        return spec
    paths = [p if os.path.isabs(p) or "://" in p else os.path.join(base, p)
             for p in rest.split(",")]
    return f"{kind}:{','.join(paths)}"


def run_dirs(settings: LocalSettings, run_id: str) -> tuple[str, str]:
    run = os.path.join(settings.root, "runs", run_id)
    return os.path.join(run, "data"), os.path.join(run, "work")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_dev(settings: LocalSettings) -> str:
    """The pinned dev file's sha256, after checking it is the pinned one."""
    path = settings.dev[len("tsv:"):]
    try:
        found = sha256_of(path)
    except OSError as error:
        raise cli.LaunchError(f"the pinned dev set {path} cannot be read: {error}") from None
    if found != settings.dev_sha256:
        raise cli.LaunchError(f"the dev set {path} has sha256 {found[:12]}..., not the pinned "
                              f"{settings.dev_sha256[:12]}...: models scored on other data "
                              "cannot be compared; restore it or pin a new one (and start a "
                              "new publish_dir)")
    return found


def published(settings: LocalSettings) -> dict | None:
    """The pointer record of the published model, None before the first publish."""
    try:
        with open(os.path.join(settings.publish_dir, "latest.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def published_tokenizer(record: dict) -> str:
    """--tokenizer_model for s2s-preprocess: the published model's SentencePiece model(s)."""
    bundle = os.path.join(record["model_dir"], "warm_start")
    source, target = (os.path.join(bundle, f"{side}.model") for side in ("source", "target"))
    with open(source, "rb") as a, open(target, "rb") as b:
        same = a.read() == b.read()
    return source if same else f"{source},{target}"


def run_base(settings: LocalSettings, *, run_id: str, dry_run: bool = False) -> dict | None:
    """The published model this run builds on, fixed by its first step (RUN/base.json):
    its tokenizer and its weights come from the same version, and a retried step sees
    the same inputs even after another run published a newer model. A dry run reads the
    one the first step would record, and records nothing."""
    path = os.path.join(settings.root, "runs", run_id, "base.json")
    if not os.path.exists(path):
        if dry_run:
            return published(settings)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "w") as f:
            json.dump({"published": published(settings)}, f, indent=2, sort_keys=True)
        os.replace(temporary, path)
    with open(path) as f:
        return json.load(f)["published"]


def step_command(settings: LocalSettings, name: str, *, run_id: str,
                 dry_run: bool = False) -> list[str]:
    """The command of step `name` in run `run_id`."""
    data_dir, workdir = run_dirs(settings, run_id)
    record = run_base(settings, run_id=run_id, dry_run=dry_run)
    bin_dir = os.path.dirname(sys.executable)
    if name == "preprocess":
        command = [os.path.join(bin_dir, "s2s-preprocess"),
                   *[f"--train={spec}" for spec in settings.train], f"--dev={settings.dev}",
                   f"--output_dir={data_dir}", *settings.preprocess_flags]
        if record:
            command.append(f"--tokenizer_model={published_tokenizer(record)}")
        return command
    if name == "train":
        command = [os.path.join(bin_dir, "s2s-train"), f"--config={settings.config}",
                   f"--data_dir={data_dir}", f"--workdir={workdir}",
                   *[f"--config.{o}" for o in cli.split_overrides(settings.overrides)]]
        if record and settings.warm_start:
            command.append(f"--config.train.init_from={record['model_dir']}")
        return command
    if name == "evaluate":
        return [os.path.join(bin_dir, "s2s-evaluate"), f"--workdir={workdir}",
                f"--data_dir={data_dir}", "--split=dev", "--export_best",
                f"--best_metric={settings.metric}"]
    if name == "publish":
        return [sys.executable, "-m", "launch.cloud.publish", f"--workdir={workdir}",
                f"--data_dir={data_dir}", f"--bucket={settings.publish_dir}",
                f"--metric={settings.metric}", f"--dev_sha256={settings.dev_sha256}"]
    raise cli.LaunchError(f"no step {name!r}; the steps are {', '.join(STEPS)}")


def run_step(settings: LocalSettings, name: str, *, run_id: str) -> None:
    check_dev(settings)
    command = step_command(settings, name, run_id=run_id)
    print(f"[{run_id}] {name}: {' '.join(command)}", flush=True)
    began = time.monotonic()
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise cli.LaunchError(f"step {name} of run {run_id} failed (exit {result.returncode})")
    print(f"[{run_id}] {name} done in {time.monotonic() - began:.0f} s", flush=True)


def history(settings: LocalSettings) -> list[dict]:
    """Every published version, oldest first: its number, dev metrics and whether it is
    the one in force."""
    models = os.path.join(settings.publish_dir, "models")
    record = published(settings) or {}
    rows = []
    for name in sorted(os.listdir(models) if os.path.isdir(models) else [], key=int):
        try:
            with open(os.path.join(models, name, "metrics.json")) as f:
                dev = json.load(f).get("dev", {})
        except FileNotFoundError:
            continue  # a publisher still uploading, or one that lost and is cleaning up
        rows.append({"version": name, "step": dev.get("step"), settings.metric:
                     dev.get(settings.metric), "latest": name == record.get("version")})
    return rows


def print_history(settings: LocalSettings) -> None:
    print(f"published models in {settings.publish_dir} (dev {settings.metric}):")
    for row in history(settings):
        value = row[settings.metric]
        print(f"  {row['version']}  step {row['step']}  {settings.metric} "
              f"{'-' if value is None else f'{value:.2f}'}{'  <- latest' if row['latest'] else ''}")


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    parser = cli.ArgumentParser(prog=prog, description="Run the retraining loop locally.")
    parser.add_argument("action", choices=["run", "step", "published"])
    parser.add_argument("step", nargs="?", choices=STEPS)
    parser.add_argument("--settings", required=True, help="JSON file of LocalSettings.")
    parser.add_argument("--run_id", default="", help="Names the run's directories; a "
                        "retry with the same id resumes it (default: the UTC time).")
    cli.add_dry_run(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    run_id = args.run_id or time.strftime("%Y%m%dt%H%M%S", time.gmtime())
    if args.action == "step" and not args.step:
        raise cli.LaunchError("step: name one of " + ", ".join(STEPS))
    if args.action == "published":
        print_history(settings)
    elif args.dry_run:
        check_dev(settings)
        names = [args.step] if args.action == "step" else STEPS
        cli.run_commands([step_command(settings, name, run_id=run_id, dry_run=True)
                          for name in names], dry_run=True)
    elif args.action == "step":
        run_step(settings, args.step, run_id=run_id)
    else:
        for name in STEPS:
            run_step(settings, name, run_id=run_id)
        print_history(settings)


if __name__ == "__main__":
    cli.run_main(PROG, main)
