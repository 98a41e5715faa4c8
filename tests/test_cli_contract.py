"""Every console script keeps one contract: a mistake is one `prog: error: ...` line on
stderr and exit status 2, never a traceback or absl's FATAL."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MISSING = "/nonexistent/s2s"

# script -> (its required flags, all valid-looking, pointing at paths that do not exist)
REQUIRED = {
    "s2s-preprocess": ["--train=tsv:/nonexistent/s2s/train.tsv", f"--output_dir={MISSING}/o"],
    "s2s-train": [f"--config={REPO}/configs/tiny.py", f"--data_dir={MISSING}",
                  f"--workdir={MISSING}/w"],
    "s2s-evaluate": [f"--workdir={MISSING}/w", f"--data_dir={MISSING}"],
    "s2s-export": [f"--workdir={MISSING}/w", f"--data_dir={MISSING}",
                   f"--export_dir={MISSING}/e"],
    "s2s-translate": [f"--model={MISSING}/e"],
    "s2s-report": [f"--workdir={MISSING}/w"],
}
MISTAKES = {
    "unknown flag": lambda required: [*required, "--no_such_flag=1"],
    "missing required flag": lambda required: required[1:],
    "stray argument": lambda required: [*required, "stray"],
    "runtime error": lambda required: required,  # the paths do not exist
}


@pytest.mark.parametrize("mistake", MISTAKES)
@pytest.mark.parametrize("script", REQUIRED)
def test_each_mistake_is_one_line_and_exit_2(script, mistake):
    argv = MISTAKES[mistake](REQUIRED[script])
    result = subprocess.run([os.path.join(BIN, script), *argv], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"{script}: error: "), result.stderr
    assert "Traceback" not in result.stderr and "FATAL" not in result.stderr
    if mistake == "stray argument":
        assert "unexpected argument(s): stray" in errors[0]
