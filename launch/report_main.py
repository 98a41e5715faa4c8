"""s2s-report: write WORKDIR/eval/report.html (launch/report.py) and print its path.

Exit status: 0 written; 2 an error (bad flags, no such workdir, the page cannot be written).
"""

import sys

from absl import app, flags

from launch import absl_cli

flags.DEFINE_string("workdir", None, "s2s-train workdir (its eval/, train/ and config.json).")
flags.DEFINE_string("data_dir", None, "s2s-preprocess output, for metadata.json and training "
                    "word frequencies; default: the one config.json records, if any.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv  # absl_cli refuses stray arguments
    import tensorflow as tf  # after flag parsing: a usage error stays fast
    from launch import report
    try:
        path = report.write_report(workdir=FLAGS.workdir, data_dir=FLAGS.data_dir)
    except (report.ReportError, tf.errors.OpError) as error:
        print(f"s2s-report: error: {getattr(error, 'message', '') or error}", file=sys.stderr)
        sys.exit(absl_cli.USAGE_ERROR)
    print(path)


def run():
    app.run(main, flags_parser=absl_cli.flags_parser("s2s-report"))


if __name__ == "__main__":
    run()
