"""The retraining loop on this machine: the CLI, Airflow (`airflow dags test`) and kfp.local.

A copy-task corpus arrives in two parts; iteration 1 trains on the first, iteration 2 on
both, warm-started from the published model with its tokenizer, and publishes only if
better on the pinned dev set; a forced-worse iteration leaves `latest` as it was.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

import toy_data
from launch.cloud import retrain_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["train.num_steps=300", "train.checkpoint_every_steps=300",
             "optimizer.learning_rate=0.01", "optimizer.warmup_steps=50"]


def write_tsv(path, pairs):
    path.write_text("".join(f"{source}\t{target}\n" for source, target in pairs))


@pytest.fixture
def loop(tmp_path):
    """Corpus files and a settings writer: settings(name, **changes) -> its path."""
    pairs = toy_data.make_pairs(1400, seed=5)
    write_tsv(tmp_path / "dev.tsv", pairs[:60])
    write_tsv(tmp_path / "first.tsv", pairs[60:400])
    write_tsv(tmp_path / "second.tsv", pairs[400:])
    base = {"backend": "local", "root": "loop", "publish_dir": "published",
            "train": ["tsv:first.tsv"], "dev": "tsv:dev.tsv",
            "dev_sha256": hashlib.sha256((tmp_path / "dev.tsv").read_bytes()).hexdigest(),
            "config": "configs/tiny.py", "overrides": OVERRIDES, "metric": "chrf",
            "preprocess_flags": ["--vocab_size=40", "--model_type=bpe"]}

    def settings(name, **changes):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**base, **changes}))
        return str(path)
    return tmp_path, settings


def env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}


def retrain(*args, timeout=600):
    result = subprocess.run([sys.executable, "-m", "launch.cloud.retrain_local", *args],
                            capture_output=True, text=True, env=env(), cwd=REPO,
                            timeout=timeout)
    return result


def publish_outcome(stdout: str) -> dict:
    (line,) = [line for line in stdout.splitlines() if line.startswith('{"') and '"status"'
               in line]
    return json.loads(line)


def latest(root) -> bytes:
    return (root / "published" / "latest.json").read_bytes()


def test_two_iterations_warm_start_publish_if_better_and_a_worse_one_changes_nothing(loop):
    root, settings = loop
    first = retrain("run", f"--settings={settings('one')}", "--run_id=one")
    assert first.returncode == 0, first.stderr[-3000:]
    assert publish_outcome(first.stdout)["status"] == "published"
    record = json.loads(latest(root))
    assert record["dev_sha256"] == json.loads((root / "one.json").read_text())["dev_sha256"]
    assert os.path.exists(os.path.join(record["model_dir"], "saved_model.pb"))

    two = settings("two", train=["tsv:first.tsv", "tsv:second.tsv"])
    second = retrain("run", f"--settings={two}", "--run_id=two")
    assert second.returncode == 0, second.stderr[-3000:]
    bundle = os.path.join(record["model_dir"], "warm_start")
    assert f"--tokenizer_model={bundle}/source.model" in second.stdout  # the same ids
    assert f"--config.train.init_from={record['model_dir']}" in second.stdout
    assert f"warm start: model weights from {bundle}/weights" in second.stderr
    data = json.loads((root / "loop" / "runs" / "two" / "data" / "metadata.json").read_text())
    assert data["splits"]["train"]["read"] == 1340  # it saw the new rows
    outcome = publish_outcome(second.stdout)
    assert (outcome["status"] == "published") == (outcome["chrf"] > record["score"])

    # Retries of finished steps change nothing.
    retried = retrain("step", "preprocess", f"--settings={two}", "--run_id=two")
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "nothing to do" in retried.stdout + retried.stderr
    before = latest(root)
    retried = retrain("step", "publish", f"--settings={two}", "--run_id=two")
    assert retried.returncode == 0 and publish_outcome(retried.stdout)["status"] == "kept"
    assert latest(root) == before

    # Forced worse: from scratch, 5 steps.
    models = sorted(os.listdir(root / "published" / "models"))
    worse = settings("worse", warm_start=False,
                     overrides=["train.num_steps=5", "train.checkpoint_every_steps=5"])
    third = retrain("run", f"--settings={worse}", "--run_id=worse")
    assert third.returncode == 0, third.stderr[-3000:]
    assert publish_outcome(third.stdout)["status"] == "kept"
    assert latest(root) == before
    assert sorted(os.listdir(root / "published" / "models")) == models
    history = retrain("published", f"--settings={worse}")
    assert history.stdout.count("<- latest") == 1
    assert json.loads(before)["version"] in history.stdout.split("<- latest")[0].splitlines()[-1]


def test_a_dev_set_that_is_not_the_pinned_one_stops_every_step(loop):
    root, settings = loop
    path = settings("one")
    with open(root / "dev.tsv", "a") as f:
        f.write("x\tX\n")
    result = retrain("step", "preprocess", f"--settings={path}", "--run_id=one")
    assert result.returncode == 2
    assert "models scored on other data cannot be compared" in result.stderr
    assert not (root / "loop").exists()


def test_settings_errors_name_the_keys(loop):
    root, settings = loop
    path = settings("bad", surprise=1)
    with pytest.raises(retrain_local.cli.LaunchError, match="unknown key.s. surprise"):
        retrain_local.load_settings(path)
    (root / "partial.json").write_text(json.dumps({"backend": "local", "root": "r"}))
    with pytest.raises(retrain_local.cli.LaunchError,
                       match="missing key.s. dev, dev_sha256, publish_dir, train"):
        retrain_local.load_settings(str(root / "partial.json"))


def test_airflow_dags_test_runs_the_loop_with_an_sqlite_db(loop):
    root, settings = loop
    path = settings("one")
    airflow = {**env(), "AIRFLOW_HOME": str(root / "airflow"),
               "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(REPO, "launch", "cloud"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
               "S2S_RETRAIN_SETTINGS": path}
    binary = os.path.join(os.path.dirname(sys.executable), "airflow")
    migrated = subprocess.run([binary, "db", "migrate"], capture_output=True, text=True,
                              env=airflow, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    result = subprocess.run([binary, "dags", "test", "s2s_retrain", "2026-12-01"],
                            capture_output=True, text=True, env=airflow, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for step in retrain_local.STEPS:  # the run id is the logical date, as in the cloud DAG
        assert f"retrain_local step {step} --settings={path} '--run_id=20261201t000000'" \
            in output
    assert '\\"status\\": \\"published\\"' in output or '"status": "published"' in output
    assert json.loads(latest(root))["version"] in os.listdir(root / "published" / "models")
    assert os.path.isdir(root / "loop" / "runs" / "20261201t000000" / "work" / "checkpoints")


def test_kfp_local_runs_the_loop(loop):
    root, settings = loop
    path = settings("one")
    result = subprocess.run(
        [sys.executable, "-m", "launch.cloud.kfp_pipeline", f"--settings={path}",
         "--run_local", "--run_id=kfp"], capture_output=True, text=True, env=env(), cwd=REPO,
        timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Pipeline 's2s-retrain-local' finished with status SUCCESS" in _plain(output)
    assert "<- latest" in result.stdout
    assert json.loads(latest(root))["version"] in os.listdir(root / "published" / "models")


def _plain(text: str) -> str:
    """Without the ANSI colours kfp.local puts around names."""
    import re
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_the_demo_holds_back_a_fifth_of_the_training_words_and_pins_dev(tmp_path):
    from launch.cloud import retrain_demo
    from pipeline import cleaning
    counts = retrain_demo.write_corpora(str(tmp_path))
    words = {}
    for name in ("dev", "first", "held_back"):
        lines = (tmp_path / f"cmudict_{name}.tsv").read_text().splitlines()
        assert len(lines) == counts[name]
        words[name] = {line.split("\t")[0] for line in lines}
    assert not words["first"] & words["held_back"] and not words["dev"] & words["first"]
    share = len(words["held_back"]) / (len(words["first"]) + len(words["held_back"]))
    assert 0.18 < share < 0.22
    fractions = cleaning.SplitFractions(dev=0.05, test=0.05)
    assert all(cleaning.split_of(word, fractions) == "dev" for word in words["dev"])
    assert counts["dev"] > len(words["dev"])  # every pronunciation of a dev word is kept
    first, second = (retrain_local.load_settings(path)
                     for path in retrain_demo.write_settings(str(tmp_path)))
    assert first.dev == second.dev and first.dev_sha256 == second.dev_sha256
    assert retrain_local.check_dev(second) == second.dev_sha256
    assert len(second.train) == 2 and second.train[0] == first.train[0]
    assert first.metric == "wer" and first.warm_start and second.warm_start
