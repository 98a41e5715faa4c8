"""Kubeflow Pipelines v2 (and Vertex AI Pipelines): the retraining steps of retrain.py.

    python -m launch.cloud.kfp_pipeline --settings=retrain.json --output=s2s_retrain.yaml

Each step is a container component running one command in the project's image; the
pipeline job's id names the run's directories, so a retried task resumes the same run.
Upload the YAML to Kubeflow (`kfp` client or UI) or submit it to Vertex AI Pipelines and
attach a schedule there.

With a local settings file ("backend": "local", retrain_local.LocalSettings), run it
here under KFP's local runner, each step a lightweight component running
`python -m launch.cloud.retrain_local step` in a subprocess (no containers):

    python -m launch.cloud.kfp_pipeline --settings=retrain.local.json --run_local --run_id=ID

--dry-run builds the pipeline in memory and prints the steps' commands in order; it
writes no YAML and runs nothing.
"""

import os
import time
from typing import Sequence

from kfp import compiler, dsl

from launch.cloud import cli, retrain, retrain_local

PROG = "python -m launch.cloud.kfp_pipeline"


def step_component(settings: retrain.RetrainSettings, name: str):
    """A container component for step `name`; its command has the run id filled in by KFP."""
    def component(run_id: str):
        (step,) = [s for s in retrain.steps(settings, run_id=run_id) if s.name == name]
        return dsl.ContainerSpec(image=settings.image, command=step.command[:1],
                                 args=step.command[1:])
    component.__name__ = f"s2s_{name}"
    return dsl.container_component(component)


def build_pipeline(settings: retrain.RetrainSettings):
    components = {name: step_component(settings, name)
                  for name in retrain.step_names(settings)}

    @dsl.pipeline(name="s2s-retrain",
                  description="preprocess -> train -> evaluate -> publish-if-better")
    def s2s_retrain():
        tasks = {}
        for step in retrain.steps(settings, run_id="run"):
            task = components[step.name](run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            task.set_caching_options(False)  # every run trains on new data
            task.set_display_name(step.name)
            for upstream in step.upstream:
                task.after(tasks[upstream])
            tasks[step.name] = task

    return s2s_retrain


@dsl.component(base_image="python:3.11")  # kfp.local runs it in this interpreter
def local_step(name: str, settings: str, run_id: str, after: str) -> str:
    """One retraining step as a local process; `after` orders the steps."""
    import subprocess
    import sys
    del after
    subprocess.run([sys.executable, "-m", "launch.cloud.retrain_local", "step", name,
                    f"--settings={settings}", f"--run_id={run_id}"], check=True)
    return name


def build_local_pipeline(settings_path: str):
    settings_path = os.path.abspath(settings_path)
    retrain_local.load_settings(settings_path)  # a bad file fails here, not in a step

    @dsl.pipeline(name="s2s-retrain-local",
                  description="preprocess -> train -> evaluate -> publish-if-better, locally")
    def s2s_retrain_local(run_id: str) -> str:
        previous = ""
        for name in retrain_local.STEPS:
            task = local_step(name=name, settings=settings_path, run_id=run_id, after=previous)
            task.set_caching_options(False)
            previous = task.output
        return previous

    return s2s_retrain_local


def run_local(settings_path: str, *, run_id: str, pipeline_root: str) -> None:
    """The pipeline under kfp.local's SubprocessRunner, in this interpreter's environment."""
    from kfp import local
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root)
    build_local_pipeline(settings_path)(run_id=run_id)


def compile_pipeline(settings: retrain.RetrainSettings, output: str) -> None:
    compiler.Compiler().compile(build_pipeline(settings), package_path=output)


def dry_run(args) -> None:
    """The commands the pipeline's steps would run, in order (the pipeline is built, so
    a settings file that would not compile fails here too)."""
    if args.run_local:
        settings = retrain_local.load_settings(args.settings)
        build_local_pipeline(args.settings)
        retrain_local.check_dev(settings)
        run_id = args.run_id or time.strftime("%Y%m%dt%H%M%S", time.gmtime())
        print(f"# kfp.local would run these as tasks, in order, with run id {run_id}")
        cli.run_commands([retrain_local.step_command(settings, name, run_id=run_id,
                                                     dry_run=True)
                          for name in retrain_local.STEPS], dry_run=True)
        return
    settings = retrain.load_settings(args.settings)
    build_pipeline(settings)
    print(f"# would write {args.output}: one container step each, in {settings.image}")
    cli.run_commands([step.command for step in retrain.steps(
        settings, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)], dry_run=True)


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    parser = cli.ArgumentParser(prog=prog,
                                description="Compile the retraining pipeline to YAML.")
    parser.add_argument("--settings", required=True, help="JSON file of RetrainSettings.")
    parser.add_argument("--output", default="s2s_retrain.yaml")
    parser.add_argument("--run_local", action="store_true", help="Run a local-backend "
                        "settings file under kfp.local instead of compiling.")
    parser.add_argument("--run_id", default="", help="--run_local: names the run's "
                        "directories (default: the UTC time).")
    parser.add_argument("--pipeline_root", default="", help="--run_local: where KFP keeps "
                        "its artifacts (default: ROOT/kfp).")
    cli.add_dry_run(parser)
    args = parser.parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return
    if args.run_local:
        settings = retrain_local.load_settings(args.settings)
        run_local(args.settings, run_id=args.run_id or time.strftime("%Y%m%dt%H%M%S",
                                                                     time.gmtime()),
                  pipeline_root=args.pipeline_root or os.path.join(settings.root, "kfp"))
        retrain_local.print_history(settings)
        return
    compile_pipeline(retrain.load_settings(args.settings), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    cli.run_main(PROG, main)
