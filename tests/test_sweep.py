"""s2s-sweep: the space file, grid/random/TPE proposals, the parallel limit, resuming, the
leaderboard, one real train-and-evaluate trial, and the Vertex AI job it would submit."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from launch import sweep, sweep_main, sweep_space, sweep_trial
from launch.cloud import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = {"optimizer.learning_rate": {"min": 1e-4, "max": 1e-2, "scale": "log"},
         "model.dropout": {"values": [0.0, 0.1, 0.3]},
         "model.num_encoder_layers": {"min": 1, "max": 4, "type": "int"}}
GRID = {"optimizer.learning_rate": {"values": [0.001, 0.003]},
        "model.dropout": {"values": [0.0, 0.1, 0.3]}}


def settings(space=SPACE, **changes):
    base = dict(config="configs/tiny.py", data_dir="D",
                space=tuple(sweep_space.parse_space(space, origin="space.json")),
                algorithm="bayes", trials=6, metric="dev_bleu", goal="max")
    return sweep.Settings(**{**base, **changes})


def objective(values):
    """A made-up dev score with its best at learning rate 0.003 and dropout 0.1."""
    return 50 - 1000 * abs(values["optimizer.learning_rate"] - 0.003) - 20 * abs(
        values["model.dropout"] - 0.1)


class FakeTrials:
    """Stands for the trial processes: scores `objective`, counts runs and concurrency."""

    def __init__(self, *, fail=(), die=(), seconds=0.0):
        self.fail, self.die, self.seconds = set(fail), set(die), seconds
        self.runs, self.active, self.most_active = [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, settings, *, sweep_dir, trial):
        with self.lock:
            self.runs.append(trial.number)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        if trial.number in self.die:
            raise KeyboardInterrupt  # the sweep process dies with this trial running
        if trial.number in self.fail:
            return sweep.Trial(number=trial.number, values=trial.values, status="failed",
                               error="exit status 2")
        return sweep.Trial(number=trial.number, values=trial.values, status="finished",
                           value=objective(trial.values), seconds=60.0)


def quiet(line):
    pass


def test_a_space_file_becomes_parameters(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"config.optimizer.learning_rate": SPACE[
        "optimizer.learning_rate"], **{k: v for k, v in SPACE.items() if k != "optimizer.learning_rate"}}))
    space = sweep_space.load_space(str(path))
    assert [p.name for p in space] == list(SPACE)
    assert (space[0].low, space[0].high, space[0].log, space[0].integer) == (1e-4, 1e-2, True,
                                                                            False)
    assert space[1].values == (0.0, 0.1, 0.3) and space[2].integer and not space[2].log
    assert sweep_space.config_overrides({"optimizer.learning_rate": 0.002, "model.name": "x"}) == [
        "--config.optimizer.learning_rate=0.002", "--config.model.name=x"]


@pytest.mark.parametrize("content, message", [
    ('{"a": {"min": 1}', "space.json is not valid JSON: line 1"),
    ('{"train.lr": {"min": 1}}', "space.json: train.lr: a range needs both"),
    ('{"train.lr": {"min": 0, "max": 1, "scale": "log"}}', "log scale needs min > 0"),
    ('{"train.lr": {"min": 2, "max": 1}}', "min < max"),
    ('{"model.layers": {"min": 1, "max": 2.5, "type": "int"}}', r"min < max \(integers\)"),
    ('{"model.dropout": {"values": [0.1, 0.1]}}', "distinct"),
    ('{"model.dropout": {"values": [0.1], "min": 0}}', "takes no min"),
    ('{"model.dropout": {"range": [0, 1]}}', "give either"),
    ('[]', "a space maps config fields to ranges"),
])
def test_a_bad_space_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "space.json"
    path.write_text(content)
    with pytest.raises(sweep_space.SpaceError, match=message):
        sweep_space.load_space(str(path))


def test_the_grid_is_every_combination_in_file_order():
    space = sweep_space.parse_space(GRID, origin="g")
    assert sweep_space.grid(space) == [
        {"optimizer.learning_rate": lr, "model.dropout": d}
        for lr in (0.001, 0.003) for d in (0.0, 0.1, 0.3)]
    with pytest.raises(sweep_space.SpaceError, match="learning_rate, model.num_encoder_layers give a range"):
        sweep_space.grid(sweep_space.parse_space(SPACE, origin="s"))


def test_a_grid_sweep_runs_each_combination_once_and_ranks_them(tmp_path):
    fake = FakeTrials()
    chosen = settings(GRID, algorithm="grid", trials=20)
    trials = sweep.run_sweep(chosen, sweep_dir=str(tmp_path), parallel=1, run_trial=fake,
                             log=quiet)
    assert sorted(fake.runs) == list(range(6)) and len(trials) == 6
    assert sorted(json.dumps(t.values, sort_keys=True) for t in trials) == sorted(
        json.dumps(v, sort_keys=True) for v in sweep_space.grid(list(chosen.space)))
    best = sweep.ranked(trials, chosen)
    assert best[0].values == {"optimizer.learning_rate": 0.003, "model.dropout": 0.1}
    assert [t.value for t in best] == sorted((t.value for t in trials), reverse=True)
    table = sweep.leaderboard(trials, chosen).splitlines()
    assert table[0] == ("| rank | trial | dev_bleu | optimizer.learning_rate | model.dropout "
                        "| minutes |")
    assert table[2].startswith(f"| 1 | {best[0].number} | 50.00 | 0.003 | 0.1 | 1.0 |")


@pytest.mark.parametrize("algorithm", ["random", "bayes"])
def test_optuna_proposes_values_inside_the_space_and_repeats_with_its_seed(tmp_path,
                                                                           algorithm):
    runs = []
    for attempt in range(2):
        trials = sweep.run_sweep(settings(algorithm=algorithm, trials=8),
                                 sweep_dir=str(tmp_path / str(attempt)), parallel=1,
                                 run_trial=FakeTrials(), log=quiet)
        runs.append([t.values for t in trials])
    assert runs[0] == runs[1] and len(runs[0]) == 8
    for values in runs[0]:
        assert 1e-4 <= values["optimizer.learning_rate"] <= 1e-2
        assert values["model.dropout"] in (0.0, 0.1, 0.3)
        assert values["model.num_encoder_layers"] in (1, 2, 3, 4)
    assert len({json.dumps(v, sort_keys=True) for v in runs[0]}) == 8


def test_no_more_than_parallel_trials_run_at_once(tmp_path):
    fake = FakeTrials(seconds=0.2)
    sweep.run_sweep(settings(algorithm="random", trials=6), sweep_dir=str(tmp_path),
                    parallel=2, run_trial=fake, log=quiet)
    assert fake.most_active == 2 and sorted(fake.runs) == list(range(6))


def test_a_rerun_skips_finished_trials_and_reruns_failed_and_interrupted_ones(tmp_path):
    chosen = settings(algorithm="bayes", trials=6)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(chosen, sweep_dir=str(tmp_path), parallel=1,
                        run_trial=FakeTrials(fail=[1], die=[3]), log=quiet)
    first = sweep.read_state(str(tmp_path))
    assert [(n, t.status) for n, t in sorted(first.items())] == [
        (0, "finished"), (1, "failed"), (2, "finished"), (3, "started")]
    lines = []
    again = FakeTrials()
    trials = sweep.run_sweep(chosen, sweep_dir=str(tmp_path), parallel=1, run_trial=again,
                             log=lines.append)
    assert lines[0].endswith("2 finished, 2 to run again")
    assert again.runs == [1, 3, 4, 5]
    assert all(t.status == "finished" for t in trials) and len(trials) == 6
    assert trials[1].values == first[1].values and trials[3].values == first[3].values
    assert sweep.run_sweep(chosen, sweep_dir=str(tmp_path), parallel=1,
                           run_trial=FakeTrials(), log=quiet) == trials


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    sweep.run_sweep(settings(algorithm="random", trials=2), sweep_dir=str(tmp_path),
                    parallel=1, run_trial=FakeTrials(), log=quiet)
    with pytest.raises(sweep.SweepError, match="other settings .trials differ.: use another"):
        sweep.run_sweep(settings(algorithm="random", trials=3), sweep_dir=str(tmp_path),
                        parallel=1, run_trial=FakeTrials(), log=quiet)


def test_a_real_trial_trains_scores_dev_and_a_rerun_reuses_it(data_dir, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"optimizer.learning_rate": {"values": [0.003]}}))
    command = [sys.executable, "-m", "launch.sweep_main", "--config=configs/tiny.py",
               f"--data_dir={data_dir}", f"--sweep_dir={tmp_path}/sweep",
               f"--space={space}", "--algorithm=grid", "--metric=dev_chrf",
               "--override=train.num_steps=20"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    trial = json.load(open(tmp_path / "sweep" / "trial-000" / "trial.json"))
    rows = [json.loads(line) for line in open(
        tmp_path / "sweep" / "trial-000" / "eval" / "dev" / "metrics.jsonl")]
    assert trial["step"] == rows[-1]["step"] == 20
    assert trial["value"] == rows[-1]["chrf"]
    assert trial["values"] == {"optimizer.learning_rate": "0.003"}
    assert f"| 1 | 0 | {trial['value']:.2f} | 0.003 |" in first.stdout
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "resuming" in again.stdout
    assert "trial 0: started" not in again.stdout


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main("s2s-sweep", sweep_main.main, argv)
    return exit_info.value.code, capsys.readouterr()


def test_vertex_dry_run_prints_the_tuning_job_over_the_same_space(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    sweep_main.main(["--backend=vertex", "--project=p", "--region=us-central1",
                     "--image=gcr.io/p/s2s:1", "--config=configs/g2p.py",
                     "--data_dir=gs://b/data", "--sweep_dir=gs://b/sweep", f"--space={space}",
                     "--algorithm=bayes", "--trials=8", "--parallel=2", "--metric=dev_wer",
                     "--override=train.num_steps=600", "--dry-run"])
    out = capsys.readouterr().out
    header, body = out.split("\n", 1)
    assert header == ("# POST https://us-central1-aiplatform.googleapis.com/v1/projects/p/"
                      "locations/us-central1/hyperparameterTuningJobs")
    job = json.loads(body)
    assert job["studySpec"]["metrics"] == [{"metricId": "dev_wer", "goal": "MINIMIZE"}]
    assert job["studySpec"]["algorithm"] == "ALGORITHM_UNSPECIFIED"
    assert job["studySpec"]["parameters"] == [
        {"parameterId": "optimizer__learning_rate",
         "doubleValueSpec": {"minValue": 1e-4, "maxValue": 1e-2}, "scaleType": "UNIT_LOG_SCALE"},
        {"parameterId": "model__dropout", "discreteValueSpec": {"values": [0.0, 0.1, 0.3]}},
        {"parameterId": "model__num_encoder_layers",
         "integerValueSpec": {"minValue": "1", "maxValue": "4"},
         "scaleType": "UNIT_LINEAR_SCALE"}]
    assert (job["maxTrialCount"], job["parallelTrialCount"]) == (8, 2)
    command = job["trialJobSpec"]["workerPoolSpecs"][0]["containerSpec"]["command"]
    assert command[:3] == ["python", "-m", "launch.sweep_trial"]
    assert "--override=train.num_steps=600" in command and "--workdir=gs://b/sweep" in command
    # what Vertex appends reaches the trial as config values
    assert sweep_trial.trial_values(["--optimizer__learning_rate=0.002",
                                     "--model__num_encoder_layers=3.0"]) == {
        "optimizer.learning_rate": "0.002", "model.num_encoder_layers": "3"}


@pytest.mark.parametrize("argv, message", [
    (["--metric=dev_nope"], "--metric='dev_nope' must be SPLIT_NAME"),
    (["--metric=dev_wer"], "configs/tiny.py does not measure wer"),
    (["--algorithm=grid"], "grid search needs \"values\" for every field"),
    (["--backend=vertex", "--project=p"], "--backend=vertex needs --region, --image"),
    (["--dry-run"], "--dry-run prints a Vertex AI job"),
])
def test_bad_requests_fail_before_any_trial(tmp_path, capsys, argv, message):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    code, output = run_cli(["--config=configs/tiny.py", "--data_dir=D",
                            f"--sweep_dir={tmp_path}/s", f"--space={space}", *argv], capsys)
    assert code == 2 and message in output.err and output.err.startswith("s2s-sweep")
    assert not os.path.exists(tmp_path / "s")
