"""Vertex AI CustomJobs: multi-worker training (chief + workers) and a separate evaluator.

    python -m launch.cloud.vertex train --project=P --region=us-central1 --image=IMAGE \
        --data_dir=gs://B/data --workdir=gs://B/run --workers=4 \
        --machine_type=g2-standard-24 --accelerator_type=NVIDIA_L4 --accelerator_count=2 --dry-run
    python -m launch.cloud.vertex evaluate ... --dry-run      # follows the same workdir

--dry-run prints the REST body of customJobs.create; --format=gcloud prints instead the
CustomJobSpec YAML that `gcloud ai custom-jobs create --config=FILE` takes. Vertex sets
TF_CONFIG (pool 0 = "chief", pool 1 = "worker") for MultiWorkerMirroredStrategy. Vertex
restarts a worker that exits non-zero; with restartJobOnWorkerRestart that restarts the
whole job, which resumes from its last checkpoint. So an interrupted run (exit 143: a
preempted worker, or a lost peer) restarts as a group, and only a finished run exits 0,
so the job cannot be marked succeeded halfway. Vertex does not tell the codes apart: an
error exit (2) is retried too, a few times, before the job fails.

Submitting is idempotent per display name: a job of that name that has not failed, been
cancelled or expired is attached to instead of created again (the retraining steps name
their jobs by run id, so an orchestrator's retry never starts a second training job), and
a create whose answer was lost is looked up before it is sent again. Polling (--wait)
retries 5xx, 429 and lost connections with exponential backoff (2 s doubling to 60 s, with
jitter; 10 failures in a row give up), logging each retry to stderr; another 4xx fails at
once. Giving up never resubmits: the job may still be running, and the message names it.
"""

import functools
import json
import random
import sys
import time
import urllib.parse
from typing import Sequence

import yaml

from launch import extras
from launch.cloud import cli, commands

PROG = "python -m launch.cloud.vertex"
API = "https://{region}-aiplatform.googleapis.com/v1"
FINAL_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                "JOB_STATE_EXPIRED")


def machine_spec(*, machine_type: str, accelerator_type: str, accelerator_count: int) -> dict:
    if bool(accelerator_type) != bool(accelerator_count):
        raise cli.LaunchError("--accelerator_type and --accelerator_count go together")
    spec = {"machineType": machine_type}
    if accelerator_type:
        spec.update(acceleratorType=accelerator_type, acceleratorCount=accelerator_count)
    return spec


def worker_pool(*, image: str, command: list[str], machine: dict, replicas: int,
                boot_disk_gb: int = 100) -> dict:
    return {"machineSpec": machine, "replicaCount": replicas,
            "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": boot_disk_gb},
            "containerSpec": {"imageUri": image, "command": command}}


def scheduling(*, spot: bool, timeout_hours: float) -> dict:
    spec = {"restartJobOnWorkerRestart": True, "timeout": f"{int(timeout_hours * 3600)}s"}
    if spot:
        spec["strategy"] = "SPOT"
    return spec


def training_job(*, display_name: str, image: str, config: str, data_dir: str, workdir: str,
                 workers: int, machine: dict, overrides: Sequence[str] = (),
                 spot: bool = False, timeout_hours: float = 168.0,
                 service_account: str = "") -> dict:
    """CustomJob body: pool 0 is the chief, pool 1 the other workers-1 machines."""
    strategy = commands.choose_strategy(workers=workers,
                                        accelerators_per_worker=machine.get("acceleratorCount", 0))
    command = commands.train_command(config=config, data_dir=data_dir, workdir=workdir,
                                     strategy=strategy, overrides=overrides)
    pools = [worker_pool(image=image, command=command, machine=machine, replicas=1)]
    if workers > 1:
        pools.append(worker_pool(image=image, command=command, machine=machine,
                                 replicas=workers - 1))
    return job_body(display_name=display_name, pools=pools,
                    scheduling=scheduling(spot=spot, timeout_hours=timeout_hours),
                    service_account=service_account)


def evaluator_job(*, display_name: str, image: str, data_dir: str, workdir: str, machine: dict,
                  final: bool = False, watch_timeout: float = 3600.0, spot: bool = False,
                  timeout_hours: float = 168.0, service_account: str = "") -> dict:
    """Beside training: wait for the workdir, follow dev checkpoints and export the best.
    With final=True (after training): score dev, then test, and stop."""
    if final:
        command = commands.final_evaluation_command(workdir=workdir, data_dir=data_dir)
    else:
        command = commands.watch_command(workdir=workdir, data_dir=data_dir,
                                         timeout=watch_timeout)
    pools = [worker_pool(image=image, command=command, machine=machine, replicas=1)]
    return job_body(display_name=display_name, pools=pools,
                    scheduling=scheduling(spot=spot, timeout_hours=timeout_hours),
                    service_account=service_account)


ALGORITHMS = {"grid": "GRID_SEARCH", "random": "RANDOM_SEARCH",
              "bayes": "ALGORITHM_UNSPECIFIED"}  # unspecified: Vertex's Bayesian optimization


def tuning_job(*, display_name: str, image: str, trial_command: list[str], metric: str,
               goal: str, algorithm: str, parameters: list[dict], trials: int,
               parallel: int, machine: dict, spot: bool = False,
               timeout_hours: float = 168.0, service_account: str = "") -> dict:
    """HyperparameterTuningJob body: Vertex runs `trial_command` per trial with each value
    appended as --<parameterId>=VALUE, and reads the metric the trial reports."""
    custom = job_body(display_name=display_name,
                      pools=[worker_pool(image=image, command=trial_command, machine=machine,
                                         replicas=1)],
                      scheduling=scheduling(spot=spot, timeout_hours=timeout_hours),
                      service_account=service_account)
    return {"displayName": display_name, "labels": custom["labels"],
            "studySpec": {"metrics": [{"metricId": metric,
                                       "goal": "MINIMIZE" if goal == "min" else "MAXIMIZE"}],
                          "parameters": parameters, "algorithm": ALGORITHMS[algorithm],
                          "measurementSelectionType": "LAST_MEASUREMENT"},
            "maxTrialCount": trials, "parallelTrialCount": parallel,
            "maxFailedTrialCount": max(1, trials // 4),
            "trialJobSpec": custom["jobSpec"]}


def job_body(*, display_name: str, pools: list[dict], scheduling: dict,
             service_account: str) -> dict:
    spec = {"workerPoolSpecs": pools, "scheduling": scheduling}
    if service_account:
        spec["serviceAccount"] = service_account
    return {"displayName": display_name, "labels": {"app": "s2s-pipeline"}, "jobSpec": spec}


def gcloud_config(body: dict) -> str:
    """The CustomJobSpec YAML for `gcloud ai custom-jobs create --config=FILE`."""
    return yaml.safe_dump(body["jobSpec"], sort_keys=False, width=100)


def gcloud_command(body: dict, *, project: str, region: str, config_file: str) -> list[str]:
    return ["gcloud", "ai", "custom-jobs", "create", f"--project={project}",
            f"--region={region}", f"--display-name={body['displayName']}",
            f"--config={config_file}"]


def authorized_session():
    """Application-default credentials (gcloud auth application-default login, or the VM's)."""
    extras.check("google.auth", "requests")
    import google.auth
    from google.auth.transport.requests import AuthorizedSession
    credentials, _ = google.auth.default(
        scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return AuthorizedSession(credentials)


TRANSIENT = (429, 500, 502, 503, 504)  # answers worth retrying: the API, not the request
RESTARTABLE = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")


@functools.cache
def transient_errors() -> tuple[type[Exception], ...]:
    """Exceptions meaning the connection failed, not the request: worth another try. Not
    every OSError: requests' InvalidURL and the like are OSErrors too, and never heal."""
    errors: list[type[Exception]] = [ConnectionError, TimeoutError]
    try:
        import requests
        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                   requests.exceptions.ChunkedEncodingError]
    except ImportError:
        pass
    try:  # AuthorizedSession refreshes its token about hourly; that request can fail too
        import google.auth.exceptions
        errors.append(google.auth.exceptions.TransportError)
    except ImportError:
        pass
    return tuple(errors)


def describe(response) -> str:
    """The status and the start of the body, on one line, for messages."""
    body = " ".join(response.text.split())[:300]
    return f"HTTP {response.status_code}: {body}" if body else f"HTTP {response.status_code}"


def jobs_url(*, project: str, region: str, collection: str = "customJobs") -> str:
    """customJobs, or hyperparameterTuningJobs."""
    return f"{API.format(region=region)}/projects/{project}/locations/{region}/{collection}"


def send_once(send) -> tuple[object | None, str]:
    """(the response, "") unless it is a transient failure: then (None or the response,
    what went wrong). Other exceptions propagate: they are not worth retrying."""
    try:
        response = send()
    except transient_errors() as error:
        return None, " ".join(f"{type(error).__name__}: {error}".split())[:300]
    if response.status_code in TRANSIENT:
        return response, describe(response)
    return response, ""


def back_off(delay: float, *, what: str, reason: str, sleep, then: str = "retrying",
             max_delay: float = 60.0) -> float:
    """Logs one line and sleeps about delay s (give or take 10 %, so that clients failing
    together do not retry together); the next delay: doubled, at most max_delay."""
    pause = delay * random.uniform(0.9, 1.1)
    print(f"vertex: {what}: {reason}; {then} in {pause:.1f} s", file=sys.stderr, flush=True)
    sleep(pause)
    return min(delay * 2, max_delay)


def request_with_retries(send, *, what: str, attempts: int = 8, first_delay: float = 2.0,
                         max_delay: float = 60.0, sleep=time.sleep):
    """send() until it answers something other than a transient error (5xx, 429, a lost
    connection), waiting 2, 4, 8 ... s (at most max_delay) in between."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        response, reason = send_once(send)
        if not reason:
            return response
        if attempt == attempts:
            raise cli.LaunchError(f"{what}: {attempts} attempts failed in a row, the last "
                                  f"with {reason}")
        delay = back_off(delay, what=what, reason=reason, sleep=sleep, max_delay=max_delay)
    raise AssertionError("unreachable")


def name_filter(display_name: str) -> str:
    """customJobs.list's filter for one display name (a quoted, escaped string literal)."""
    escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'display_name="{escaped}"'


def find_job(display_name: str, *, project: str, region: str, session,
             sleep=time.sleep, collection: str = "customJobs") -> dict | None:
    """The newest job of that display name that has not failed, been cancelled or expired:
    the one a retried step must attach to instead of submitting another."""
    url = (f"{jobs_url(project=project, region=region, collection=collection)}"
           f"?filter={urllib.parse.quote(name_filter(display_name), safe='')}")
    jobs, token = [], ""
    while True:
        page_url = f"{url}&pageToken={urllib.parse.quote(token, safe='')}" if token else url
        response = request_with_retries(functools.partial(session.get, page_url),
                                        sleep=sleep, what=f"listing jobs named {display_name}")
        if response.status_code >= 400:
            raise cli.LaunchError(f"cannot list Vertex AI jobs named {display_name} "
                                  f"({describe(response)})")
        page = response.json()
        jobs += [job for job in page.get(collection, [])
                 if job.get("displayName") == display_name
                 and job.get("state") not in RESTARTABLE]
        token = page.get("nextPageToken", "")
        if not token:
            return max(jobs, key=lambda job: job.get("createTime", ""), default=None)


def submit(body: dict, *, project: str, region: str, session, attempts: int = 5,
           sleep=time.sleep, collection: str = "customJobs") -> tuple[dict, bool]:
    """customJobs.create, at most once per display name: (the job, True when it already
    existed). A retried step attaches to its job; a create that failed in transit is
    looked up before it is sent again, since it may have created the job."""
    name = body["displayName"]
    existing = find_job(name, project=project, region=region, session=session, sleep=sleep,
                        collection=collection)
    if existing:
        return existing, True
    url = jobs_url(project=project, region=region, collection=collection)
    delay = 2.0
    for attempt in range(1, attempts + 1):
        response, reason = send_once(functools.partial(session.post, url, json=body))
        if not reason:
            if response.status_code >= 400:
                raise cli.LaunchError(f"Vertex AI refused the job {name} "
                                      f"({response.status_code}): "
                                      f"{' '.join(response.text.split())[:500]}")
            return response.json(), False
        delay = back_off(delay, what=f"creating {name}", reason=reason, sleep=sleep,
                         then="looking for it before sending it again")
        existing = find_job(name, project=project, region=region, session=session,
                            sleep=sleep, collection=collection)
        if existing:  # the create went through although its answer did not
            print(f"vertex: {name} was created after all ({existing['name']}): not sent "
                  "again", file=sys.stderr, flush=True)
            return existing, True
        if attempt == attempts:
            raise cli.LaunchError(f"creating {name}: {attempts} attempts failed, the last "
                                  f"with {reason}; no job of that name exists")
        print(f"vertex: no job named {name} exists: creating it again", file=sys.stderr,
              flush=True)
    raise AssertionError("unreachable")


def wait(name: str, *, region: str, session, poll_seconds: float = 60.0, attempts: int = 10,
         sleep=time.sleep) -> str:
    """Polls the job until it ends; its final state, or a LaunchError unless it succeeded.
    Transient API errors are retried with backoff, up to `attempts` in a row per poll (about
    5 minutes by default); a 4xx fails at once. The job is never submitted again: failing
    to read it says nothing about the job."""
    url = f"{API.format(region=region)}/{name}"
    while True:
        try:
            response = request_with_retries(functools.partial(session.get, url), sleep=sleep,
                                            attempts=attempts, what=f"polling {name}")
        except cli.LaunchError as error:
            raise cli.LaunchError(f"{error}; the job may still be running (not resubmitted):"
                                  f" check {name}") from None
        if response.status_code >= 400:
            raise cli.LaunchError(f"cannot read {name} ({describe(response)}); not retried,"
                                  " the job was not resubmitted")
        state = response.json().get("state", "")
        if state in FINAL_STATES:
            if state != "JOB_STATE_SUCCEEDED":
                raise cli.LaunchError(f"{name} ended in {state}")
            return state
        sleep(poll_seconds)


def parse_args(argv: Sequence[str], *, prog: str = PROG):
    parser = cli.ArgumentParser(prog=prog,
                                description="Vertex AI CustomJobs for s2s-pipeline.")
    parser.add_argument("role", choices=["train", "evaluate"],
                        help="train: chief + workers; evaluate: the separate evaluator job.")
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--image", required=True, help="The image built from the Dockerfile.")
    parser.add_argument("--data_dir", required=True, help="gs:// s2s-preprocess output.")
    parser.add_argument("--workdir", required=True, help="gs:// training workdir.")
    parser.add_argument("--config", default="configs/transformer.py")
    parser.add_argument("--display_name", default="", help="Default: s2s-<role>-<time>.")
    parser.add_argument("--workers", type=int, default=1, help="Machines (train only).")
    parser.add_argument("--machine_type", default="g2-standard-12")
    parser.add_argument("--accelerator_type", default="NVIDIA_L4",
                        help="e.g. NVIDIA_L4, NVIDIA_TESLA_T4, NVIDIA_A100_80GB; '' for none.")
    parser.add_argument("--accelerator_count", type=int, default=1)
    parser.add_argument("--override", action="append", default=[],
                        help="Config override section.field=value (repeatable, train only).")
    parser.add_argument("--final", action="store_true",
                        help="evaluate: score dev then test once, instead of following dev.")
    parser.add_argument("--spot", action="store_true", help="Use Spot VMs (preemptible).")
    parser.add_argument("--timeout_hours", type=float, default=168.0)
    parser.add_argument("--service_account", default="")
    parser.add_argument("--format", choices=["rest", "gcloud"], default="rest",
                        help="--dry-run output: the REST body, or gcloud's --config YAML.")
    parser.add_argument("--wait", action="store_true", help="Block until the job ends.")
    cli.add_dry_run(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers} must be at least 1")
    if args.role == "evaluate" and args.workers != 1:
        parser.error("--workers applies to train only")
    if not args.accelerator_type:
        args.accelerator_count = 0
    return args


def body_from_args(args) -> dict:
    cli.require_gcs("--data_dir", args.data_dir)
    cli.require_gcs("--workdir", args.workdir)
    machine = machine_spec(machine_type=args.machine_type,
                           accelerator_type=args.accelerator_type,
                           accelerator_count=args.accelerator_count)
    name = args.display_name or f"s2s-{args.role}-{time.strftime('%Y%m%d-%H%M%S')}"
    common = dict(display_name=name, image=args.image, data_dir=args.data_dir,
                  workdir=args.workdir, machine=machine, spot=args.spot,
                  timeout_hours=args.timeout_hours, service_account=args.service_account)
    if args.role == "train":
        return training_job(**common, config=args.config, workers=args.workers,
                            overrides=cli.split_overrides(args.override))
    return evaluator_job(**common, final=args.final)


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    args = parse_args(argv, prog=prog)
    body = body_from_args(args)
    if args.dry_run:
        if args.format == "gcloud":
            config_file = f"{body['displayName']}.yaml"
            create = gcloud_command(body, project=args.project, region=args.region,
                                    config_file=config_file)
            print(f"# {' '.join(create)}")
            print(f"# --- {config_file} ---")
            print(gcloud_config(body), end="")
        else:
            print(f"# POST {API.format(region=args.region)}/projects/{args.project}/locations/"
                  f"{args.region}/customJobs")
            print(json.dumps(body, indent=2))
        return
    session = authorized_session()
    job, existed = submit(body, project=args.project, region=args.region, session=session)
    if existed:
        print(f"{job['name']} ({body['displayName']}) exists already "
              f"({job.get('state', '?')}): attached to it, nothing submitted", flush=True)
    else:
        print(f"submitted {job['name']}", flush=True)
    if args.wait:
        print(wait(job["name"], region=args.region, session=session))


if __name__ == "__main__":
    cli.run_main(PROG, main)
