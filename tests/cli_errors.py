"""Shared check for the cloud CLIs' bad-input contract."""

import pytest

from launch.cloud import cli


def assert_one_line_error(capsys, *, prog, main, argv, message):
    """Runs a CLI as its console script does: exit 2 and one stderr line naming the problem."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(prog, main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ")
    assert message in err and err.count("\n") == 1
