"""s2s-train: absl flags -> trainer.train(config, workdir=..., data_dir=..., strategy=...).

Exit codes (launch/exit_codes.py): 0 only when the run reached num_steps; 143 when it
stopped for a preemption (this worker's or a peer's, checkpoint saved) or lost a peer:
restart the whole group to resume; 2 for an error that a restart will not fix.
"""

import contextlib
import os
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import absl_cli

config_flags.DEFINE_config_file("config", None, "ml_collections config file, e.g. "
                                "configs/transformer.py; override fields with --config.a.b=v")
flags.DEFINE_string("workdir", None, "Checkpoints, summaries and config.json go here.")
flags.DEFINE_string("data_dir", None, "s2s-preprocess output directory.")
flags.DEFINE_string("strategy", "default",
                    "default | one_device | mirrored | multi_worker_mirrored | tpu")
flags.DEFINE_string("tpu", "", "TPU name, or 'local' on a TPU VM (with --strategy=tpu).")
flags.DEFINE_float("peer_timeout", 60.0, "multi_worker_mirrored: seconds without a heartbeat "
                   "from a peer before the job stops with an error (exit 143).")
flags.DEFINE_float("start_timeout", 900.0, "multi_worker_mirrored: seconds to wait for every "
                   "worker to start before giving up (exit 137).")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (the CPU proxy "
                     "for multi-replica strategies); 0 leaves it alone.")
flags.mark_flags_as_required(["config", "workdir", "data_dir"])


def main(argv):
    del argv  # absl_cli refuses stray arguments
    from launch import exit_codes
    from launch import strategy as strategy_lib  # imports TensorFlow: after flag parsing
    from launch import trainer
    from pipeline import dataset

    flag_values = flags.FLAGS
    try:
        strategy_lib.validate(flag_values.strategy, tpu=flag_values.tpu)
        trainer.validate_config(flag_values.config)
        dataset.load_metadata(flag_values.data_dir)
        if flag_values.cpu_devices:
            strategy_lib.set_cpu_devices(flag_values.cpu_devices)
        with _deadline(flag_values.start_timeout,
                       message=f"not every worker started within --start_timeout="
                               f"{flag_values.start_timeout:g} s",
                       enabled=flag_values.strategy == "multi_worker_mirrored"):
            strategy = strategy_lib.create(flag_values.strategy, tpu=flag_values.tpu,
                                           peer_timeout=flag_values.peer_timeout,
                                           start_timeout=flag_values.start_timeout)
        trainer.train(flag_values.config, workdir=flag_values.workdir,
                      data_dir=flag_values.data_dir, strategy=strategy)
    except trainer.Preempted as stop:
        print(f"s2s-train: {stop}", file=sys.stderr)
        sys.exit(exit_codes.PREEMPTED)
    except trainer.PeerLost as error:
        print(f"s2s-train: error: {error}; restart the whole job to resume from the last "
              "checkpoint", file=sys.stderr)
        sys.exit(exit_codes.PREEMPTED)
    except (ValueError, trainer.TrainingError) as error:
        print(f"s2s-train: error: {error}", file=sys.stderr)
        sys.exit(exit_codes.ERROR)


# Runs beside s2s-train: SIGKILLs it (exit 137, a restart code) unless stopped in time.
_WATCHDOG = """import os, signal, sys, time
parent, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    if os.getppid() != parent:
        sys.exit(0)
    time.sleep(0.5)
sys.stderr.write(sys.argv[3] + "\\n")
os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def _deadline(seconds: float, *, message: str, enabled: bool):
    """Bounds the block to `seconds`. TensorFlow's start-up wait for peers has no bound of
    its own and holds the interpreter (no thread or signal handler runs), so another
    process enforces it."""
    if not enabled:
        yield
        return
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                 str(seconds), f"s2s-train: error: {message}; stopping "
                                 "(exit 137) so that the job restarts"])
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def run():
    app.run(main, flags_parser=absl_cli.flags_parser("s2s-train"))


if __name__ == "__main__":
    run()
