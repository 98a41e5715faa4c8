"""Vertex AI CustomJob bodies (launch/cloud/vertex.py) from --dry-run, and submission."""

import io
import json
import shlex
from contextlib import redirect_stdout

import pytest
import yaml

import cli_errors
from launch.cloud import cli, vertex

COMMON = ["--project=proj", "--region=europe-west4", "--image=img:3",
          "--data_dir=gs://b/data", "--workdir=gs://b/run", "--display_name=s2s-x"]


def dry_run(*args) -> tuple[list[str], str]:
    out = io.StringIO()
    with redirect_stdout(out):
        vertex.main([*args, *COMMON, "--dry-run"])
    lines = out.getvalue().splitlines(keepends=True)
    comments = [line for line in lines if line.startswith("#")]
    return comments, "".join(line for line in lines if not line.startswith("#"))


def flag(argv, name):
    [value] = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return value


def test_training_job_has_a_chief_pool_and_a_worker_pool():
    comments, text = dry_run("train", "--workers=4", "--machine_type=a2-highgpu-2g",
                             "--accelerator_type=NVIDIA_TESLA_A100", "--accelerator_count=2",
                             "--override=train.num_steps=9000", "--spot")
    assert comments == ["# POST https://europe-west4-aiplatform.googleapis.com/v1/projects/proj/"
                        "locations/europe-west4/customJobs\n"]
    body = json.loads(text)
    chief, workers = body["jobSpec"]["workerPoolSpecs"]
    assert (chief["replicaCount"], workers["replicaCount"]) == (1, 3)
    for pool in (chief, workers):
        assert pool["machineSpec"] == {"machineType": "a2-highgpu-2g",
                                       "acceleratorType": "NVIDIA_TESLA_A100",
                                       "acceleratorCount": 2}
        assert pool["containerSpec"]["imageUri"] == "img:3"
    assert chief["containerSpec"] == workers["containerSpec"]
    command = chief["containerSpec"]["command"]
    assert command[0] == "s2s-train" and "--config.train.num_steps=9000" in command
    assert flag(command, "strategy") == "multi_worker_mirrored"
    assert (flag(command, "workdir"), flag(command, "data_dir")) == ("gs://b/run", "gs://b/data")
    assert body["jobSpec"]["scheduling"]["strategy"] == "SPOT"
    assert body["jobSpec"]["scheduling"]["restartJobOnWorkerRestart"] is True
    assert body["displayName"] == "s2s-x"


@pytest.mark.parametrize("count, accelerator, strategy", [
    (2, "NVIDIA_L4", "mirrored"), (1, "NVIDIA_L4", "one_device"), (0, "", "default")])
def test_one_machine_mirrors_its_own_gpus(count, accelerator, strategy):
    _, text = dry_run("train", f"--accelerator_type={accelerator}",
                      f"--accelerator_count={count}")
    [pool] = json.loads(text)["jobSpec"]["workerPoolSpecs"]
    assert flag(pool["containerSpec"]["command"], "strategy") == strategy
    assert ("acceleratorType" in pool["machineSpec"]) == bool(accelerator)


def test_evaluator_job_follows_the_training_workdir():
    _, train_text = dry_run("train", "--workers=2")
    _, eval_text = dry_run("evaluate")
    train_command = json.loads(train_text)["jobSpec"]["workerPoolSpecs"][0]["containerSpec"][
        "command"]
    [pool] = json.loads(eval_text)["jobSpec"]["workerPoolSpecs"]
    command = pool["containerSpec"]["command"]
    assert command[:2] == ["sh", "-c"]
    wait, evaluate = (shlex.split(part) for part in command[2].split(" && "))
    assert wait[:5] == ["python", "-m", "launch.cloud.files", "wait", "gs://b/run/config.json"]
    assert evaluate[0] == "s2s-evaluate" and "--watch" in evaluate
    assert flag(evaluate, "split") == "dev"
    for name in ("workdir", "data_dir"):
        assert flag(evaluate, name) == flag(train_command, name)
    assert pool["containerSpec"]["imageUri"] == "img:3" and pool["replicaCount"] == 1


def test_final_evaluation_scores_dev_then_test():
    _, text = dry_run("evaluate", "--final")
    command = json.loads(text)["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["command"]
    dev, test = (shlex.split(part) for part in command[2].split(" && "))
    assert (flag(dev, "split"), flag(test, "split")) == ("dev", "test")
    assert "--watch" not in dev + test


def test_gcloud_format_is_the_job_spec_of_the_rest_body():
    comments, text = dry_run("train", "--workers=2", "--format=gcloud")
    _, rest = dry_run("train", "--workers=2")
    assert yaml.safe_load(text) == json.loads(rest)["jobSpec"]
    assert comments[0] == ("# gcloud ai custom-jobs create --project=proj --region=europe-west4 "
                           "--display-name=s2s-x --config=s2s-x.yaml\n")


@pytest.mark.parametrize("args, message", [
    (["train", "--project=p", "--region=r", "--image=i", "--data_dir=/local/data",
      "--workdir=gs://b/run"], "--data_dir='/local/data' must be a gs:// path"),
    (["evaluate", "--project=p", "--region=r", "--image=i", "--data_dir=gs://b/d",
      "--workdir=gs://b/w", "--workers=2"], "--workers applies to train only"),
    (["train", "--project=p", "--region=r", "--image=i", "--data_dir=gs://b/d",
      "--workdir=gs://b/w", "--accelerator_count=0"], "go together"),
])
def test_bad_input_is_one_line(args, message, capsys):
    cli_errors.assert_one_line_error(capsys, prog=vertex.PROG, main=vertex.main,
                                     argv=[*args, "--dry-run"], message=message)


class FakeResponse:
    def __init__(self, status_code, payload):
        self.status_code, self.payload, self.text = status_code, payload, json.dumps(payload)

    def json(self):
        return self.payload


class FakeSession:
    """Records requests; answers with the canned responses in order."""

    def __init__(self, *responses):
        self.responses, self.requests = list(responses), []

    def post(self, url, json):
        self.requests.append(("POST", url, json))
        return self._answer()

    def get(self, url):
        self.requests.append(("GET", url, None))
        return self._answer()

    def _answer(self):
        answer = self.responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def job_body(name="d"):
    return vertex.training_job(display_name=name, image="i", config="c", data_dir="gs://b/d",
                               workdir="gs://b/w", workers=1,
                               machine=vertex.machine_spec(machine_type="m", accelerator_type="",
                                                           accelerator_count=0))


JOBS = "https://r-aiplatform.googleapis.com/v1/projects/proj/locations/r/customJobs"
LIST = JOBS + "?filter=display_name%3D%22d%22"
NAME = "projects/1/locations/r/customJobs/42"
NO_JOBS = FakeResponse(200, {})


def test_submit_posts_the_body_and_wait_polls_until_the_end():
    body = job_body()
    session = FakeSession(NO_JOBS, FakeResponse(200, {"name": NAME}),
                          FakeResponse(200, {"state": "JOB_STATE_RUNNING"}),
                          FakeResponse(200, {"state": "JOB_STATE_SUCCEEDED"}))
    job, existed = vertex.submit(body, project="proj", region="r", session=session)
    assert not existed
    assert vertex.wait(job["name"], region="r", session=session,
                       poll_seconds=0) == "JOB_STATE_SUCCEEDED"
    assert session.requests[:2] == [("GET", LIST, None), ("POST", JOBS, body)]
    assert [r[1] for r in session.requests[2:]] == [
        f"https://r-aiplatform.googleapis.com/v1/{NAME}"] * 2


def test_a_tuning_job_is_created_once_in_its_own_collection():
    tuning = "https://r-aiplatform.googleapis.com/v1/projects/proj/locations/r/" \
        "hyperparameterTuningJobs"
    body = {"displayName": "d", "studySpec": {}}
    existing = {"hyperparameterTuningJobs": [{"displayName": "d", "name": "t/7",
                                              "state": "JOB_STATE_RUNNING"}]}
    session = FakeSession(NO_JOBS, FakeResponse(200, {"name": "t/7"}),
                          FakeResponse(200, existing))
    job, existed = vertex.submit(body, project="proj", region="r", session=session,
                                 collection="hyperparameterTuningJobs")
    assert (job, existed) == ({"name": "t/7"}, False)
    assert session.requests == [("GET", tuning + "?filter=display_name%3D%22d%22", None),
                                ("POST", tuning, body)]
    again, existed = vertex.submit(body, project="proj", region="r", session=session,
                                   collection="hyperparameterTuningJobs")
    assert existed and again["name"] == "t/7" and posts(session) == 1


def posts(session) -> int:
    return sum(1 for method, _, _ in session.requests if method == "POST")


def test_a_submitted_job_polled_through_two_503s_succeeds_backing_off_without_resubmitting(
        capsys):
    slept = []
    session = FakeSession(NO_JOBS, FakeResponse(200, {"name": NAME}),
                          FakeResponse(503, {"error": "backend unavailable"}),
                          FakeResponse(503, {"error": "backend unavailable"}),
                          FakeResponse(200, {"state": "JOB_STATE_RUNNING"}),
                          FakeResponse(200, {"state": "JOB_STATE_SUCCEEDED"}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session,
                                 sleep=slept.append)
    assert not existed and slept == []
    assert vertex.wait(job["name"], region="r", session=session, poll_seconds=30,
                       sleep=slept.append) == "JOB_STATE_SUCCEEDED"
    assert posts(session) == 1
    backoff, poll = slept[:2], slept[2:]
    assert 1.8 <= backoff[0] <= 2.2 and 3.6 <= backoff[1] <= 4.4  # 2 s, then 4 s, +-10 %
    assert poll == [30]
    retries = capsys.readouterr().err.splitlines()
    assert len(retries) == 2
    for line, delay in zip(retries, backoff):
        assert line == (f"vertex: polling {NAME}: HTTP 503: {{\"error\": \"backend "
                        f"unavailable\"}}; retrying in {delay:.1f} s")


def test_polling_retries_429_5xx_and_lost_connections_with_growing_capped_waits():
    requests = pytest.importorskip("requests")
    slept = []
    failures = [FakeResponse(429, {}), FakeResponse(500, {}), FakeResponse(502, {}),
                FakeResponse(504, {}), requests.exceptions.ConnectionError("reset"),
                requests.exceptions.ReadTimeout("read timed out"), ConnectionError("reset"),
                TimeoutError("timed out")]
    session = FakeSession(*failures, FakeResponse(200, {"state": "JOB_STATE_SUCCEEDED"}))
    assert vertex.wait(NAME, region="r", session=session,
                       sleep=slept.append) == "JOB_STATE_SUCCEEDED"
    assert len(slept) == len(failures)
    assert slept[:6] == sorted(slept[:6]) and slept[5] > 8 * slept[0]  # 2, 4, ... 64 -> 60
    assert all(54 <= delay <= 66 for delay in slept[5:])  # capped at 60 s, +-10 %


def test_an_error_that_is_not_transient_is_raised_without_retrying():
    requests = pytest.importorskip("requests")
    slept = []
    session = FakeSession(requests.exceptions.InvalidURL("no host"))
    with pytest.raises(requests.exceptions.InvalidURL):
        vertex.wait(NAME, region="r", session=session, sleep=slept.append)
    assert slept == [] and len(session.requests) == 1


@pytest.mark.parametrize("status", [403, 404])
def test_a_4xx_while_polling_fails_at_once_naming_the_job_and_status(status):
    slept = []
    session = FakeSession(FakeResponse(status, {"error": {"message": "nope"}}))
    with pytest.raises(cli.LaunchError) as error:
        vertex.wait(NAME, region="r", session=session, sleep=slept.append)
    assert str(error.value) == (f"cannot read {NAME} (HTTP {status}: "
                                '{"error": {"message": "nope"}}); not retried, the job was '
                                "not resubmitted")
    assert slept == [] and len(session.requests) == 1


def test_polling_gives_up_after_its_budget_naming_the_job_and_never_resubmits(capsys):
    slept = []
    session = FakeSession(*[FakeResponse(500, {})] * 3)
    with pytest.raises(cli.LaunchError) as error:
        vertex.wait(NAME, region="r", session=session, attempts=3, sleep=slept.append)
    assert str(error.value) == (f"polling {NAME}: 3 attempts failed in a row, the last with "
                                f"HTTP 500: {{}}; the job may still be running (not "
                                f"resubmitted): check {NAME}")
    assert len(session.requests) == 3 and posts(session) == 0 and len(slept) == 2
    assert len(capsys.readouterr().err.splitlines()) == 2
    # The default budget: 10 failures in a row.
    session = FakeSession(*[ConnectionError("reset")] * 10)
    with pytest.raises(cli.LaunchError, match="10 attempts failed in a row, the last with "
                       "ConnectionError: reset; the job may still be running"):
        vertex.wait(NAME, region="r", session=session, sleep=lambda s: None)
    assert len(session.requests) == 10 and posts(session) == 0


def test_the_budget_counts_failures_in_a_row_not_in_all():
    session = FakeSession(FakeResponse(503, {}), FakeResponse(503, {}),
                          FakeResponse(200, {"state": "JOB_STATE_RUNNING"}),
                          FakeResponse(503, {}), FakeResponse(503, {}),
                          FakeResponse(200, {"state": "JOB_STATE_SUCCEEDED"}))
    assert vertex.wait(NAME, region="r", session=session, attempts=3,
                       sleep=lambda s: None) == "JOB_STATE_SUCCEEDED"


def test_a_retried_step_attaches_to_its_running_job_and_a_failed_one_is_resubmitted():
    running = {"name": NAME, "displayName": "d", "state": "JOB_STATE_RUNNING",
               "createTime": "2026-12-05T10:00:00Z"}
    failed = {"name": "projects/1/locations/r/customJobs/41", "displayName": "d",
              "state": "JOB_STATE_FAILED", "createTime": "2026-12-05T09:00:00Z"}
    session = FakeSession(FakeResponse(200, {"customJobs": [failed, running]}),
                          FakeResponse(200, {"state": "JOB_STATE_SUCCEEDED"}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session)
    assert existed and job["name"] == NAME
    assert vertex.wait(job["name"], region="r", session=session) == "JOB_STATE_SUCCEEDED"
    assert session.requests == [("GET", LIST, None),
                                ("GET", f"https://r-aiplatform.googleapis.com/v1/{NAME}", None)]
    session = FakeSession(FakeResponse(200, {"customJobs": [failed]}),
                          FakeResponse(200, {"name": "projects/1/locations/r/customJobs/43"}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session)
    assert not existed and job["name"].endswith("/43")
    assert [r[0] for r in session.requests] == ["GET", "POST"]


def test_the_job_listing_is_read_to_its_last_page():
    running = {"name": NAME, "displayName": "d", "state": "JOB_STATE_RUNNING"}
    session = FakeSession(FakeResponse(200, {"customJobs": [], "nextPageToken": "t/2"}),
                          FakeResponse(200, {"customJobs": [running]}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session)
    assert existed and job["name"] == NAME and posts(session) == 0
    assert [r[1] for r in session.requests] == [LIST, LIST + "&pageToken=t%2F2"]


def test_a_display_name_with_quotes_is_escaped_in_the_filter():
    assert vertex.name_filter('a"b\\c') == r'display_name="a\"b\\c"'


def test_a_wait_flag_on_a_retried_step_attaches_to_the_job_and_submits_nothing(
        monkeypatch, capsys):
    done = {"name": NAME, "displayName": "s2s-x", "state": "JOB_STATE_SUCCEEDED"}
    session = FakeSession(FakeResponse(200, {"customJobs": [done]}),
                          FakeResponse(200, {"state": "JOB_STATE_SUCCEEDED"}))
    monkeypatch.setattr(vertex, "authorized_session", lambda: session)
    vertex.main(["train", *COMMON, "--wait"])
    assert capsys.readouterr().out.splitlines() == [
        f"{NAME} (s2s-x) exists already (JOB_STATE_SUCCEEDED): attached to it, nothing "
        "submitted", "JOB_STATE_SUCCEEDED"]
    assert posts(session) == 0


def test_a_create_that_failed_in_transit_but_created_the_job_is_not_sent_again(capsys):
    created = {"name": NAME, "displayName": "d", "state": "JOB_STATE_PENDING"}
    slept = []
    session = FakeSession(NO_JOBS, FakeResponse(503, {}),
                          FakeResponse(200, {"customJobs": [created]}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session,
                                 sleep=slept.append)
    assert existed and job["name"] == NAME
    assert [r[0] for r in session.requests] == ["GET", "POST", "GET"]
    assert len(slept) == 1
    err = capsys.readouterr().err
    assert "creating d: HTTP 503: {}; looking for it before sending it again in" in err
    assert f"d was created after all ({NAME}): not sent again" in err
    # The same when the answer was lost on the way back.
    session = FakeSession(NO_JOBS, ConnectionError("reset"),
                          FakeResponse(200, {"customJobs": [created]}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session,
                                 sleep=lambda s: None)
    assert existed and posts(session) == 1
    # Not created: sent again, once.
    session = FakeSession(NO_JOBS, FakeResponse(503, {}), NO_JOBS,
                          FakeResponse(200, {"name": NAME}))
    job, existed = vertex.submit(job_body(), project="proj", region="r", session=session,
                                 sleep=lambda s: None)
    assert not existed and [r[0] for r in session.requests] == ["GET", "POST", "GET", "POST"]


def test_a_create_that_keeps_failing_gives_up_after_its_attempts():
    session = FakeSession(NO_JOBS, *[FakeResponse(503, {}), NO_JOBS] * 2)
    with pytest.raises(cli.LaunchError, match="creating d: 2 attempts failed, the last with "
                       "HTTP 503: {}; no job of that name exists"):
        vertex.submit(job_body(), project="proj", region="r", session=session, attempts=2,
                      sleep=lambda s: None)
    assert posts(session) == 2


def test_a_refused_or_failed_job_is_an_error():
    with pytest.raises(cli.LaunchError, match="refused the job d \\(400\\)"):
        vertex.submit({"displayName": "d"}, project="p", region="r",
                      session=FakeSession(NO_JOBS, FakeResponse(400, {"error": "bad"})))
    with pytest.raises(cli.LaunchError, match="ended in JOB_STATE_FAILED"):
        vertex.wait("n", region="r", poll_seconds=0,
                    session=FakeSession(FakeResponse(200, {"state": "JOB_STATE_FAILED"})))
