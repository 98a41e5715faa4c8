"""s2s-sweep: hyperparameter search over train-and-evaluate trials, here or on Vertex AI.

    s2s-sweep --config=configs/g2p.py --data_dir=D --sweep_dir=S --space=space.json \
        --algorithm=bayes --trials=8 --metric=dev_wer --parallel=1 \
        [--override=train.num_steps=600 ...]
    s2s-sweep --backend=vertex --project=P --region=R --image=IMAGE --data_dir=gs://... \
        --sweep_dir=gs://... (same search flags) --dry-run

Here: trials are processes (at most --parallel at once), the leaderboard is
SWEEP_DIR/sweep.jsonl plus a table on the console, and a rerun resumes (launch/sweep.py).
On Vertex AI: one HyperparameterTuningJob over the same space; --dry-run prints its body.
"""

import importlib.util
import json
import os
import time
from typing import Sequence

from launch import extras, metrics, sweep, sweep_space, sweep_trial
from launch.cloud import cli

PROG = "s2s-sweep"


def parse_args(argv: Sequence[str]):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="ml_collections config file.")
    parser.add_argument("--data_dir", required=True, help="s2s-preprocess output.")
    parser.add_argument("--sweep_dir", required=True,
                        help="One workdir per trial, sweep.jsonl and sweep.json go here.")
    parser.add_argument("--space", required=True, help="Search space file (JSON or YAML).")
    parser.add_argument("--algorithm", choices=sweep.ALGORITHMS, default="bayes")
    parser.add_argument("--trials", type=int, default=8, help="Trials in all (a grid may "
                        "have fewer combinations).")
    parser.add_argument("--metric", default="dev_bleu",
                        help="SPLIT_METRIC to optimize, scored on the last checkpoint: "
                        "dev_bleu, dev_wer, dev_chrf, ...")
    parser.add_argument("--goal", choices=["min", "max"], default=None,
                        help="Default: the metric's direction (min for WER, max for BLEU).")
    parser.add_argument("--parallel", type=int, default=1, help="Trials at a time.")
    parser.add_argument("--override", action="append", default=[],
                        help="A config value every trial uses, section.field=VALUE "
                        "(repeatable), e.g. train.num_steps=600.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random/TPE sampler.")
    parser.add_argument("--backend", choices=["local", "vertex"], default="local")
    vertex = parser.add_argument_group("--backend=vertex")
    vertex.add_argument("--project", default="")
    vertex.add_argument("--region", default="")
    vertex.add_argument("--image", default="", help="The image built from the Dockerfile.")
    vertex.add_argument("--display_name", default="", help="Default: s2s-sweep-<time>.")
    vertex.add_argument("--machine_type", default="g2-standard-12")
    vertex.add_argument("--accelerator_type", default="NVIDIA_L4")
    vertex.add_argument("--accelerator_count", type=int, default=1)
    vertex.add_argument("--spot", action="store_true")
    vertex.add_argument("--service_account", default="")
    cli.add_dry_run(parser)
    args = parser.parse_args(list(argv))
    if args.trials < 1 or args.parallel < 1:
        parser.error("--trials and --parallel must be at least 1")
    if args.backend == "vertex":
        missing = [f"--{name}" for name in ("project", "region", "image")
                   if not getattr(args, name)]
        if missing:
            parser.error(f"--backend=vertex needs {', '.join(missing)}")
    elif args.dry_run:
        parser.error("--dry-run prints a Vertex AI job: use it with --backend=vertex")
    if not args.accelerator_type:
        args.accelerator_count = 0
    return args


def settings_from_args(args) -> sweep.Settings:
    try:
        _, name = sweep_trial.parse_metric(args.metric)
        space = sweep_space.load_space(args.space)
    except (sweep_trial.TrialError, sweep_space.SpaceError) as error:
        raise cli.LaunchError(str(error)) from None
    goal = args.goal or ("max" if metrics.HIGHER_IS_BETTER[name] else "min")
    if args.algorithm == "grid":
        try:
            sweep_space.grid(space)
        except sweep_space.SpaceError as error:
            raise cli.LaunchError(str(error)) from None
    return sweep.Settings(config=args.config, data_dir=args.data_dir, space=tuple(space),
                          algorithm=args.algorithm, trials=args.trials, metric=args.metric,
                          goal=goal, overrides=tuple(cli.split_overrides(args.override)),
                          seed=args.seed)


def check_config(path: str, *, metric: str) -> None:
    """Loads the config once here, so a missing file or an unmeasured metric fails now
    rather than after the first trial has trained."""
    if not os.path.exists(path):
        raise cli.LaunchError(f"--config={path}: no such file")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    _, name = sweep_trial.parse_metric(metric)
    measured = metrics.measured(metrics.parse_metrics(config.eval.metrics))
    if name not in measured:
        raise cli.LaunchError(f"--metric={metric}: {path} does not measure {name} "
                              f"(config.eval.metrics={config.eval.metrics}); add "
                              f"--override=eval.metrics={config.eval.metrics},{name}")


def vertex_body(args, settings: sweep.Settings) -> dict:
    from launch.cloud import vertex
    cli.require_gcs("--data_dir", args.data_dir)
    cli.require_gcs("--sweep_dir", args.sweep_dir)
    command = ["python", "-m", "launch.sweep_trial", f"--config={settings.config}",
               f"--data_dir={settings.data_dir}", f"--workdir={args.sweep_dir}",
               f"--metric={settings.metric}",
               *(f"--override={override}" for override in settings.overrides)]
    machine = vertex.machine_spec(machine_type=args.machine_type,
                                  accelerator_type=args.accelerator_type,
                                  accelerator_count=args.accelerator_count)
    return vertex.tuning_job(
        display_name=args.display_name or f"s2s-sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        image=args.image, trial_command=command, metric=settings.metric, goal=settings.goal,
        algorithm=settings.algorithm, parameters=sweep_space.vertex_parameters(
            list(settings.space)), trials=settings.trials, parallel=args.parallel,
        machine=machine, spot=args.spot, service_account=args.service_account)


def run_vertex(args, settings: sweep.Settings) -> None:
    extras.require(PROG, "yaml")
    from launch.cloud import vertex
    body = vertex_body(args, settings)
    url = vertex.jobs_url(project=args.project, region=args.region,
                          collection="hyperparameterTuningJobs")
    if args.dry_run:
        print(f"# POST {url}")
        print(json.dumps(body, indent=2))
        return
    session = vertex.authorized_session()
    job, existed = vertex.submit(body, project=args.project, region=args.region,
                                 session=session, collection="hyperparameterTuningJobs")
    print(f"{job['name']} ({body['displayName']}) exists already: attached, nothing submitted"
          if existed else f"submitted {job['name']}", flush=True)


def run_local(args, settings: sweep.Settings) -> None:
    if settings.algorithm != "grid":
        extras.require(PROG, "optuna")
    check_config(settings.config, metric=settings.metric)
    trials = sweep.run_sweep(settings, sweep_dir=args.sweep_dir, parallel=args.parallel,
                             log=lambda line: print(line, flush=True))
    print()
    print(sweep.leaderboard(trials, settings))
    best = sweep.ranked(trials, settings)
    if best:
        print(f"\nbest: trial {best[0].number}, {settings.metric} {best[0].value:.2f}, "
              f"workdir {sweep.trial_dir(args.sweep_dir, best[0].number)}")
    if any(trial.status != "finished" for trial in trials):
        raise cli.LaunchError("some trials failed (their log.txt says why); a rerun with "
                              "the same flags runs them again")


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    try:
        if args.backend == "vertex":
            run_vertex(args, settings)
        else:
            run_local(args, settings)
    except sweep.SweepError as error:
        raise cli.LaunchError(str(error)) from None


def run() -> None:
    """Console entry point `s2s-sweep`."""
    cli.run_main(PROG, main)


if __name__ == "__main__":
    run()
