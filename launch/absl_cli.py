"""One command-line contract for the absl-based commands (s2s-train, s2s-evaluate,
s2s-export, s2s-translate): a bad or missing flag, an unknown config key or a stray
argument is one line `prog: error: ...` on stderr and exit status 2, as the argparse-based
cloud launchers and s2s-preprocess do, instead of absl's two-line FATAL and status 1."""

import sys

from absl import flags

USAGE_ERROR = 2


def fail(prog: str, message: str):
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def flags_parser(prog: str):
    """A `flags_parser` for absl.app.run that keeps the contract above."""
    def parse(argv):
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as error:
            fail(prog, str(error))
        except (AttributeError, KeyError) as error:  # ml_collections: no such config field
            key = str(error).strip("\"'")
            overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
            fail(prog, f"unknown config key '{key}' in: {overrides}")
        if len(rest) > 1:
            fail(prog, f"unexpected argument(s): {' '.join(rest[1:])}")
        return rest
    return parse
