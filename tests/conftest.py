"""Fixtures shared by the trainer-level tests, and the `serial` marker."""

import sys

import pytest

import toy_data

# Tests that time a reaction (peer timeouts, signal latency) or start real worker groups:
# `make test` runs them after the others, one at a time, so that no test running beside
# them can slow them past their limits.
SERIAL_FILES = {"test_local_cluster.py", "test_train_cli.py", "test_distributed.py",
                "test_checkpoint_faults.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "serial: run alone, not beside other tests")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The copy-task data dir (tests/toy_data.py), one per test module."""
    return toy_data.make_toy_data_dir(str(tmp_path_factory.mktemp("toy")))


@pytest.fixture(autouse=True)
def _float32_policy():
    """A test that trains in mixed precision sets Keras' global policy; the next test
    starts from float32 again. Keras is not imported for tests that never load it."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
