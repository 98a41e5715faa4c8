"""BUILD stays consistent with the tree: one py_library per module, one py_test per test."""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "models", "launch", "launch/cloud", "configs")


def build_targets(kind: str) -> dict[str, str]:
    """name -> the single source file of each `kind` rule in BUILD."""
    text = open(os.path.join(REPO, "BUILD")).read()
    rules = re.findall(kind + r"\((.*?)\n\)", text, flags=re.S)
    targets = {}
    for body in rules:
        name = re.search(r'name = "([^"]+)"', body).group(1)
        srcs = re.search(r'srcs = \["([^"]+)"\]', body).group(1)
        targets[name] = srcs
    return targets


def test_every_module_and_test_helper_has_a_library_target():
    modules = sorted(
        path for package in PACKAGES
        for path in glob.glob(os.path.join(REPO, package, "*.py"))
        if not path.endswith("__init__.py"))
    helpers = [path for path in glob.glob(os.path.join(REPO, "tests", "*.py"))
               if not os.path.basename(path).startswith(("test_", "conftest"))]
    sources = {os.path.relpath(p, REPO) for p in modules + helpers}
    libraries = build_targets("py_library")
    assert sources == set(libraries.values())
    for name, src in libraries.items():
        assert name == src[:-3].replace("/", "_"), (name, src)


def test_every_test_file_has_a_test_target():
    tests = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "test_*.py"))}
    assert tests
    assert tests == set(build_targets("py_test").values())
