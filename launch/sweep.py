"""s2s-sweep's search: trials as independent train-and-evaluate processes, a leaderboard,
and a state that a rerun resumes.

Grid search walks every combination of the space's values in file order. Random and
Bayesian search ask Optuna (RandomSampler; TPESampler, the Tree-structured Parzen
Estimator, with the constant liar when trials run in parallel): Optuna is maintained,
runs in-process with no server, and lets a resumed sweep hand it the finished trials
(keras-tuner would need its own trial loop around our trainer). Each trial is
`python -m launch.sweep_trial` in SWEEP_DIR/trial-NNN, at most `parallel` at a time.

SWEEP_DIR/sweep.jsonl gets a row when a trial starts and one when it ends; a rerun skips
finished trials, runs an unfinished or failed one again with its values (training resumes
from its checkpoint) and asks for new ones up to the trial count. SWEEP_DIR/sweep.json
holds the settings; a rerun with other settings is refused, since its leaderboard would
mix two searches.
"""

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time

from launch import shared_files, sweep_space, sweep_trial

STATE, SETTINGS = "sweep.jsonl", "sweep.json"
ALGORITHMS = ("grid", "random", "bayes")


class SweepError(ValueError):
    """The sweep cannot run as asked; one line says why."""


@dataclasses.dataclass(frozen=True)
class Settings:
    config: str
    data_dir: str
    space: tuple  # of sweep_space.Parameter
    algorithm: str
    trials: int
    metric: str
    goal: str  # "min" | "max"
    overrides: tuple = ()
    seed: int = 0

    def describe(self) -> dict:
        return {"config": self.config, "data_dir": self.data_dir,
                "space": [dataclasses.asdict(p) for p in self.space],
                "algorithm": self.algorithm, "trials": self.trials, "metric": self.metric,
                "goal": self.goal, "overrides": list(self.overrides), "seed": self.seed}


@dataclasses.dataclass
class Trial:
    number: int
    values: dict
    status: str = "started"  # started | finished | failed
    value: float | None = None
    seconds: float = 0.0
    error: str = ""


def trial_dir(sweep_dir: str, number: int) -> str:
    return os.path.join(sweep_dir, f"trial-{number:03d}")


def trial_command(settings: Settings, *, workdir: str, values: dict) -> list[str]:
    return [sys.executable, "-m", "launch.sweep_trial", f"--config={settings.config}",
            f"--data_dir={settings.data_dir}", f"--workdir={workdir}",
            f"--metric={settings.metric}",
            *(f"--override={override}" for override in settings.overrides),
            *sweep_space.config_overrides(values)]


def run_trial_process(settings: Settings, *, sweep_dir: str, trial: Trial) -> Trial:
    """Runs one trial to its end; its output goes to trial-NNN/log.txt."""
    workdir = trial_dir(sweep_dir, trial.number)
    os.makedirs(workdir, exist_ok=True)
    started = time.monotonic()
    with open(os.path.join(workdir, "log.txt"), "ab") as log:
        status = subprocess.run(trial_command(settings, workdir=workdir, values=trial.values),
                                stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - started, 1)
    result = sweep_trial.read_result(workdir)
    if status == 0 and result is not None:
        return dataclasses.replace(trial, status="finished", value=result["value"],
                                   seconds=seconds)
    return dataclasses.replace(trial, status="failed", seconds=seconds,
                               error=f"exit status {status}; see {workdir}/log.txt")


def read_state(sweep_dir: str) -> dict:
    """{trial number: its latest Trial} from sweep.jsonl (a torn last line is ignored)."""
    path = os.path.join(sweep_dir, STATE)
    trials = {}
    if not os.path.exists(path):
        return trials
    for line in open(path, encoding="utf-8"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        trials[row["number"]] = Trial(**row)
    return trials


def record(sweep_dir: str, trial: Trial) -> None:
    with open(os.path.join(sweep_dir, STATE), "a", encoding="utf-8") as stream:
        stream.write(json.dumps(dataclasses.asdict(trial)) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def check_settings(sweep_dir: str, settings: Settings) -> None:
    """Writes sweep.json on the first run; refuses a rerun with other settings."""
    path = os.path.join(sweep_dir, SETTINGS)
    wanted = json.loads(json.dumps(settings.describe()))  # tuples as the file has them
    if os.path.exists(path):
        with open(path) as stream:
            saved = json.load(stream)
        if saved != wanted:
            changed = sorted(key for key in wanted if saved.get(key) != wanted[key])
            raise SweepError(f"{sweep_dir} holds a sweep with other settings "
                             f"({', '.join(changed)} differ): use another --sweep_dir")
        return
    os.makedirs(sweep_dir, exist_ok=True)
    shared_files.write_text_atomically(path, json.dumps(wanted, indent=2))


class Proposer:
    """Where each new trial's values come from: the grid, or an Optuna study that has been
    told every finished trial."""

    def __init__(self, settings: Settings, known: list[Trial]):
        self.settings = settings
        self.study = None
        if settings.algorithm == "grid":
            tried = [trial.values for trial in known]
            self.pending = [values for values in sweep_space.grid(list(settings.space))
                            if values not in tried]
            return
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if settings.algorithm == "random":
            sampler = optuna.samplers.RandomSampler(seed=settings.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=settings.seed, constant_liar=True,
                                                 n_startup_trials=max(2, settings.trials // 3))
        self.study = optuna.create_study(
            direction="minimize" if settings.goal == "min" else "maximize", sampler=sampler)
        self.distributions = sweep_space.distributions(list(settings.space))
        self.asked = {}
        for trial in known:
            if trial.status == "finished":
                self.tell_past(trial)

    def tell_past(self, trial: Trial) -> None:
        import optuna
        self.study.add_trial(optuna.trial.create_trial(
            params=trial.values, distributions=self.distributions, value=trial.value))

    def ask(self, number: int) -> dict | None:
        """The next values, or None when a grid is exhausted."""
        if self.study is None:
            return self.pending.pop(0) if self.pending else None
        asked = self.study.ask(self.distributions)
        self.asked[number] = asked
        return dict(asked.params)

    def retry(self, number: int, values: dict) -> None:
        """A trial of an earlier run that did not finish runs again with its values."""
        if self.study is not None:
            self.study.enqueue_trial(values)
            self.asked[number] = self.study.ask(self.distributions)

    def tell(self, trial: Trial) -> None:
        if self.study is None:
            return
        import optuna
        asked = self.asked.pop(trial.number)
        if trial.status == "finished":
            self.study.tell(asked, trial.value)
        else:
            self.study.tell(asked, state=optuna.trial.TrialState.FAIL)


def run_sweep(settings: Settings, *, sweep_dir: str, parallel: int, run_trial=None,
              log=print) -> list[Trial]:
    """Runs the trials still to run, `parallel` at a time; returns every trial's latest
    state. `run_trial(settings, sweep_dir=, trial=)` defaults to a process per trial."""
    run_trial = run_trial or run_trial_process
    check_settings(sweep_dir, settings)
    trials = read_state(sweep_dir)
    done = [t for t in trials.values() if t.status == "finished"]
    proposer = Proposer(settings, list(trials.values()))
    again = sorted((t for t in trials.values() if t.status != "finished"),
                   key=lambda t: t.number)
    if done or again:
        log(f"resuming {sweep_dir}: {len(done)} finished, {len(again)} to run again")
    next_number = max(trials, default=-1) + 1
    running = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        while True:
            while len(running) < parallel:
                if again:
                    trial = again.pop(0)
                    proposer.retry(trial.number, trial.values)
                    trial = Trial(number=trial.number, values=trial.values)
                elif next_number < settings.trials:
                    values = proposer.ask(next_number)
                    if values is None:
                        next_number = settings.trials  # the grid is exhausted
                        continue
                    trial = Trial(number=next_number, values=values)
                    next_number += 1
                else:
                    break
                record(sweep_dir, trial)
                trials[trial.number] = trial
                log(f"trial {trial.number}: started {format_values(trial.values)}")
                running[pool.submit(run_trial, settings, sweep_dir=sweep_dir,
                                    trial=trial)] = trial
            if not running:
                break
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                del running[future]
                trial = future.result()
                record(sweep_dir, trial)
                trials[trial.number] = trial
                proposer.tell(trial)
                log(progress_line(trial, trials.values(), settings))
    return sorted(trials.values(), key=lambda t: t.number)


def format_values(values: dict) -> str:
    return " ".join(f"{name}={_short(value)}" for name, value in values.items())


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ranked(trials, settings: Settings) -> list[Trial]:
    """Finished trials, best first (ties: the earlier trial)."""
    sign = 1 if settings.goal == "min" else -1
    return sorted((t for t in trials if t.status == "finished"),
                  key=lambda t: (sign * t.value, t.number))


def progress_line(trial: Trial, trials, settings: Settings) -> str:
    if trial.status != "finished":
        return f"trial {trial.number}: failed after {trial.seconds / 60:.1f} min ({trial.error})"
    best = ranked(trials, settings)[0]
    return (f"trial {trial.number}: {settings.metric} {trial.value:.2f} in "
            f"{trial.seconds / 60:.1f} min (best so far: trial {best.number}, "
            f"{best.value:.2f})")


def leaderboard(trials, settings: Settings) -> str:
    """A Markdown table of the finished trials, best first, then the failed ones."""
    names = [p.name for p in settings.space]
    lines = [f"| rank | trial | {settings.metric} | " + " | ".join(names) + " | minutes |",
             "|" + "---|" * (len(names) + 4)]
    for rank, trial in enumerate(ranked(trials, settings), 1):
        cells = [str(rank), str(trial.number), f"{trial.value:.2f}",
                 *(_short(trial.values.get(name)) for name in names),
                 f"{trial.seconds / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [t for t in trials if t.status != "finished"]
    for trial in failed:
        lines.append(f"| - | {trial.number} | {trial.status} | "
                     + " | ".join(_short(trial.values.get(n)) for n in names)
                     + f" | {trial.seconds / 60:.1f} |")
    return "\n".join(lines)
