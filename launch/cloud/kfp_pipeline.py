"""Kubeflow Pipelines v2 (and Vertex AI Pipelines): the retraining steps of retrain.py.

    python -m launch.cloud.kfp_pipeline --settings=retrain.json --output=s2s_retrain.yaml

Each step is a container component running one command in the project's image; the
pipeline job's id names the run's directories, so a retried task resumes the same run.
Upload the YAML to Kubeflow (`kfp` client or UI) or submit it to Vertex AI Pipelines and
attach a schedule there.
"""

from typing import Sequence

from kfp import compiler, dsl

from launch.cloud import cli, retrain

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


def compile_pipeline(settings: retrain.RetrainSettings, output: str) -> None:
    compiler.Compiler().compile(build_pipeline(settings), package_path=output)


def main(argv: Sequence[str]) -> None:
    parser = cli.ArgumentParser(prog=PROG,
                                description="Compile the retraining pipeline to YAML.")
    parser.add_argument("--settings", required=True, help="JSON file of RetrainSettings.")
    parser.add_argument("--output", default="s2s_retrain.yaml")
    args = parser.parse_args(argv)
    compile_pipeline(retrain.load_settings(args.settings), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    cli.run_main(PROG, main)
