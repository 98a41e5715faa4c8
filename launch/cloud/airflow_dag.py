"""Airflow DAG `s2s_retrain`: preprocess -> train -> evaluate -> publish-if-better.

With a settings file that says "backend": "local" (retrain_local.LocalSettings), the DAG
runs each step as a local process through BashOperator instead (no Kubernetes): try it
with `airflow dags test s2s_retrain` against an SQLite metadata DB (README: Retraining).

Deploy: copy this file into the DAGs folder, make the `launch` package importable there
(`pip install --no-deps` of this repository: these modules need only the standard library
and Airflow), and set S2S_RETRAIN_SETTINGS to a JSON file of retrain.RetrainSettings.
Each step is a KubernetesPodOperator running one command in the project's image (see
retrain.py); the pods need Google Cloud credentials (GKE Workload Identity via
`kubernetes_service_account`). Cloud Composer has the cncf.kubernetes provider built in.
"""

import datetime
import os
import shlex
import sys

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

from launch.cloud import retrain, retrain_local

SETTINGS_VARIABLE = "S2S_RETRAIN_SETTINGS"
RUN_ID = "{{ ts_nodash | lower }}"  # the logical date: a retried task reuses its run's dirs


def build_dag(settings: retrain.RetrainSettings, *, dag_id: str = "s2s_retrain") -> DAG:
    with DAG(dag_id=dag_id, schedule=settings.schedule,
             start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             max_active_runs=1, default_args={"retries": 1},
             tags=["s2s-pipeline"], doc_md=__doc__) as dag:
        tasks = {}
        for step in retrain.steps(settings, run_id=RUN_ID):
            tasks[step.name] = KubernetesPodOperator(
                task_id=step.name, name=f"s2s-{step.name}", namespace=settings.namespace,
                image=settings.image, cmds=step.command[:1], arguments=step.command[1:],
                service_account_name=settings.kubernetes_service_account or None,
                get_logs=True, on_finish_action="delete_pod")
            for upstream in step.upstream:
                tasks[upstream] >> tasks[step.name]
    return dag


def build_local_dag(settings: retrain_local.LocalSettings, *, settings_path: str,
                    dag_id: str = "s2s_retrain") -> DAG:
    """The same steps as local processes: `python -m launch.cloud.retrain_local step`."""
    from airflow.providers.standard.operators.bash import BashOperator
    with DAG(dag_id=dag_id, schedule=settings.schedule,
             start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             max_active_runs=1,
             default_args={"retries": 1, "retry_delay": datetime.timedelta(seconds=30)},
             tags=["s2s-pipeline"], doc_md=__doc__) as dag:
        tasks = {}
        for name in retrain_local.STEPS:
            command = [sys.executable, "-m", "launch.cloud.retrain_local", "step", name,
                       f"--settings={os.path.abspath(settings_path)}", f"--run_id={RUN_ID}"]
            tasks[name] = BashOperator(task_id=name, bash_command=shlex.join(command))
            for upstream in retrain_local.UPSTREAM[name]:
                tasks[upstream] >> tasks[name]
    return dag


def dag_from_settings(path: str) -> DAG:
    if retrain_local.is_local(path):
        return build_local_dag(retrain_local.load_settings(path), settings_path=path)
    return build_dag(retrain.load_settings(path))


dag = dag_from_settings(os.environ.get(SETTINGS_VARIABLE, ""))
