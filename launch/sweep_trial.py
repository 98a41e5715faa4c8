"""One s2s-sweep trial: train with the trial's values, score dev, record the metric.

    python -m launch.sweep_trial --config=C --data_dir=D --workdir=W --metric=dev_wer \
        [--override=train.num_steps=600 ...] [--config.train.learning_rate=0.001 ...]

The same program runs a trial here (s2s-sweep starts one per trial) and on Vertex AI,
where the service appends each value as --<field with __ for dots>=VALUE, names the trial
in CLOUD_ML_TRIAL_ID (the trial trains in WORKDIR/trial-<id>) and reads the metric from the
hypertune file (CLOUD_ML_HP_METRIC_FILE, by default /tmp/hypertune/output.metrics).
The result goes to WORKDIR/trial.json, written last and atomically: a rerun of a finished
trial does nothing, and an interrupted one resumes training from its checkpoint.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

RESULT = "trial.json"
HYPERTUNE_FILE = "/tmp/hypertune/output.metrics"


class TrialError(Exception):
    """The trial cannot give its metric; the message says why."""


def parse_metric(metric: str) -> tuple[str, str]:
    """"dev_wer" -> ("dev", "wer"): the split scored and the metric read from its row."""
    split, _, name = metric.partition("_")
    from launch import metrics
    if split not in ("dev", "test") or name not in metrics.HIGHER_IS_BETTER:
        raise TrialError(f"--metric={metric!r} must be SPLIT_NAME with SPLIT dev or test and "
                         f"NAME one of {', '.join(metrics.HIGHER_IS_BETTER)} (e.g. dev_wer)")
    return split, name


def trial_values(extra: list[str]) -> dict:
    """{config field: value text} from --config.a.b=V, or Vertex's --a__b=V."""
    values = {}
    for argument in extra:
        key, sep, value = argument.partition("=")
        if not key.startswith("--") or not sep:
            raise TrialError(f"unexpected argument {argument!r}: trial values look like "
                             "--config.section.field=VALUE")
        name = key[2:].removeprefix("config.").replace("__", ".")
        values[name] = _integral(value)
    return values


def _integral(text: str) -> str:
    """Vertex sends a discrete 2 as 2.0, which an integer field refuses; a float field
    takes 2 as well."""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else text


def run(command: list[str]) -> None:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    status = subprocess.run(command).returncode
    if status:
        raise TrialError(f"{command[2]} exited with status {status}")


def read_result(workdir: str) -> dict | None:
    import tensorflow as tf
    path = os.path.join(workdir, RESULT)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as stream:
        return json.load(stream)


def score(*, workdir: str, metric: str) -> dict:
    """The metric of the last checkpoint, from the evaluator's rows for the split."""
    import tensorflow as tf
    split, name = parse_metric(metric)
    path = os.path.join(workdir, "eval", split, "metrics.jsonl")
    with tf.io.gfile.GFile(path) as stream:
        rows = [json.loads(line) for line in stream if line.strip()]
    last = max(rows, key=lambda row: row["step"])
    if name not in last:
        raise TrialError(f"{path} has no {name}: add it to config.eval.metrics")
    return {"metric": metric, "value": float(last[name]), "step": int(last["step"])}


def report_to_vertex(result: dict) -> None:
    """The hypertune metrics file Vertex AI reads a trial's measurement from."""
    path = os.environ.get("CLOUD_ML_HP_METRIC_FILE", HYPERTUNE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as stream:
        stream.write(json.dumps({
            "timestamp": time.time(), "trial": os.environ.get("CLOUD_ML_TRIAL_ID", "0"),
            result["metric"]: str(result["value"]), "global_step": str(result["step"])}) + "\n")


def run_trial(*, config: str, data_dir: str, workdir: str, metric: str, overrides: list[str],
              values: dict) -> dict:
    """Trains (resuming any checkpoint), scores the split, writes WORKDIR/trial.json."""
    from launch import shared_files
    split, _ = parse_metric(metric)
    done = read_result(workdir)
    if done is not None and done.get("values") == values:
        return done
    fixed = [f"--config.{override}" for override in overrides]
    chosen = [f"--config.{name}={value}" for name, value in values.items()]
    run([sys.executable, "-m", "launch.train", f"--config={config}", f"--data_dir={data_dir}",
         f"--workdir={workdir}", *fixed, *chosen])
    run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}",
         f"--data_dir={data_dir}", f"--split={split}", "--noexport_best"])
    result = {**score(workdir=workdir, metric=metric), "values": values}
    shared_files.write_text_atomically(os.path.join(workdir, RESULT), json.dumps(result))
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m launch.sweep_trial",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--override", action="append", default=[],
                        help="A fixed config value, section.field=VALUE (repeatable).")
    args, extra = parser.parse_known_args(argv)
    try:
        values = trial_values(extra)
        workdir = args.workdir
        if "CLOUD_ML_TRIAL_ID" in os.environ:
            workdir = os.path.join(workdir, f"trial-{os.environ['CLOUD_ML_TRIAL_ID']}")
        result = run_trial(config=args.config, data_dir=args.data_dir, workdir=workdir,
                           metric=args.metric, overrides=args.override, values=values)
    except TrialError as error:
        print(f"sweep trial: error: {error}", file=sys.stderr)
        sys.exit(2)
    if "CLOUD_ML_TRIAL_ID" in os.environ:
        report_to_vertex(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
