"""The main of every Bazel py_test: runs its one pytest file, so a failing assertion
fails the target (a test file alone has no main and would pass without running)."""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
