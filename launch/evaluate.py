"""s2s-evaluate: score the latest (or a named) checkpoint, or follow new ones with --watch.

Exit status: 0 done; 2 an error (bad flags, data or checkpoints); 3 (--watch) the timeout
passed before the final training step was scored: the trainer is slow, stopped or failed.
"""

import sys

from absl import app, flags

from launch import absl_cli, extras

flags.DEFINE_string("workdir", None, "s2s-train workdir (reads checkpoints and config.json).")
flags.DEFINE_string("data_dir", None, "s2s-preprocess output with the split to score.")
flags.DEFINE_string("split", "dev", "Split to decode and score: dev | test.")
flags.DEFINE_bool("watch", False, "Follow new checkpoints as the trainer writes them.")
flags.DEFINE_string("checkpoint", "", "Score this checkpoint path instead of the latest.")
flags.DEFINE_integer("beam_size", None, "Default: the training config's decode.beam_size.")
flags.DEFINE_float("alpha", None, "GNMT length penalty; default: decode.alpha.")
flags.DEFINE_integer("average_last", 1, "Score (and export) the mean weights of the checkpoint "
                     "and the N-1 before it.")
flags.DEFINE_bool("export_best", None, "Export the best checkpoint (see --best_metric) as a "
                  "new version of the export root WORKDIR/export/best; default: only when "
                  "scoring the dev split.")
flags.DEFINE_enum("best_metric", "", ["", "bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL",
                                      "wer", "per", "xent", "token_accuracy"],
                  "What makes a checkpoint the best (ter, wer, per, xent: lower is better); "
                  "it must be measured (config.eval.metrics). Default: the run's "
                  "config.eval.select_on, else the first of config.eval.metrics.")
flags.DEFINE_string("strategy", "default", "Decode data-parallel over this strategy's "
                    "replicas: default | one_device | mirrored | tpu.")
flags.DEFINE_string("tpu", "", "TPU name, or 'local' on a TPU VM (with --strategy=tpu).")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (the CPU proxy "
                     "for --strategy=mirrored); 0 leaves it alone.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the beam search.")
flags.DEFINE_float("timeout", 600.0, "--watch: stop after this many seconds without a new "
                   "checkpoint; exit status 3 if the final training step was not scored.")
flags.mark_flags_as_required(["workdir", "data_dir"])
FLAGS = flags.FLAGS
UNFINISHED = 3  # exit status: --watch timed out before the final training step was scored


def main(argv):
    del argv  # absl_cli refuses stray arguments
    extras.require("s2s-evaluate", "sacrebleu")
    from launch import evaluator
    from launch import strategy as strategy_lib
    try:
        if FLAGS.strategy == "multi_worker_mirrored":
            raise ValueError("--strategy=multi_worker_mirrored: the evaluator is one process; "
                             "use mirrored (all local devices) or tpu")
        strategy_lib.validate(FLAGS.strategy, tpu=FLAGS.tpu)
        if FLAGS.cpu_devices:
            strategy_lib.set_cpu_devices(FLAGS.cpu_devices)
        strategy = strategy_lib.create(FLAGS.strategy, tpu=FLAGS.tpu)
        rows = evaluator.evaluate(
            workdir=FLAGS.workdir, data_dir=FLAGS.data_dir, split=FLAGS.split,
            watch=FLAGS.watch, checkpoint=FLAGS.checkpoint, beam_size=FLAGS.beam_size,
            alpha=FLAGS.alpha, average_last=FLAGS.average_last, timeout=FLAGS.timeout,
            export_best=FLAGS.export_best, best_metric=FLAGS.best_metric, strategy=strategy,
            jit_compile=FLAGS.jit_compile)
    except evaluator.WatchTimeout as error:
        for row in error.rows:
            print_row(row)
        print(f"s2s-evaluate: error: {error}", file=sys.stderr)
        sys.exit(UNFINISHED)
    except (ValueError, evaluator.EvaluationError) as error:
        print(f"s2s-evaluate: error: {error}", file=sys.stderr)
        sys.exit(2)
    for row in rows:
        print_row(row)


def print_row(row: dict) -> None:
    """A human summary of one scored checkpoint."""
    mean = f" (mean of {row['averaged']} checkpoints)" if row.get("averaged", 1) > 1 else ""
    print(f"\n{row['split']} set, step {row['step']}{mean}, beam {row['beam_size']}, "
          f"{row['num_sentences']} sentences decoded in {row['decode_seconds']:.1f} s "
          f"({row['num_sentences'] / max(row['decode_seconds'], 1e-9):.1f}/s, "
          f"{row.get('replicas', 1)} replica(s)):")
    names = {"bleu": "BLEU", "chrf": "chrF", "wer": "word error rate (%)",
             "per": "phoneme error rate (%)", "xent": "teacher-forced xent",
             "token_accuracy": "token accuracy (%)"}
    for key, name in names.items():
        if key in row:
            print(f"  {name:<24} {row[key]:6.2f}")
    print(f"  {row['bleu_signature']}")
    print("examples (source => hypothesis   [reference]):")
    for source, reference, hypothesis in row["examples"]:
        print(f"  {source} => {hypothesis}   [{reference}]")
    if not row.get("recorded", True):
        print("another evaluator had recorded this measurement already; not added again")
    if row.get("stopped_training"):
        print(f"early stopping: {row['stopped_training']}; the trainer stops at its next "
              "check (WORKDIR/STOP_TRAINING.json)")
    if row.get("exported"):
        print(f"exported the best model so far to {row['exported']} "
              "(WORKDIR/export/best/current.json points to it)")


def run():
    app.run(main, flags_parser=absl_cli.flags_parser("s2s-evaluate"))


if __name__ == "__main__":
    run()
