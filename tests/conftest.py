"""Fixtures shared by the trainer-level tests."""

import sys

import pytest

import toy_data


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
