"""Airflow DAG `s2s_retrain`: preprocess -> train -> evaluate -> publish-if-better.

Deploy: copy this file into the DAGs folder, make the `launch` package importable there
(`pip install --no-deps` of this repository: these modules need only the standard library
and Airflow), and set S2S_RETRAIN_SETTINGS to a JSON file of retrain.RetrainSettings.
Each step is a KubernetesPodOperator running one command in the project's image (see
retrain.py); the pods need Google Cloud credentials (GKE Workload Identity via
`kubernetes_service_account`). Cloud Composer has the cncf.kubernetes provider built in.
"""

import os

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

from launch.cloud import retrain

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


dag = build_dag(retrain.load_settings(os.environ.get(SETTINGS_VARIABLE, "")))
