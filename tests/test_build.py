"""BUILD is what tests/generate_build.py makes of the tree: every module a library with
the deps its imports name, every test file a test run through pytest."""

import glob
import os
import re
import subprocess
import sys

import generate_build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rules(kind: str) -> dict[str, str]:
    """name -> body of each `kind` rule in BUILD."""
    text = open(os.path.join(REPO, "BUILD")).read()
    return {re.search(r'name = "([^"]+)"', body).group(1): body
            for body in re.findall(kind + r"\((.*?)\n\)", text, flags=re.S)}


def test_build_is_what_the_tree_gives():
    result = subprocess.run([sys.executable, "tests/generate_build.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_module_is_a_library_and_every_test_file_a_test():
    modules = {os.path.relpath(p, REPO) for package in generate_build.PACKAGES
               for p in glob.glob(os.path.join(REPO, package, "*.py"))}
    libraries = {re.search(r'srcs = \["([^"]+)"\]', body).group(1)
                 for body in rules("py_library").values()}
    assert modules <= libraries and "models/__init__.py" in libraries
    tests = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "test_*.py"))}
    bodies = rules("py_test").values()
    assert {re.search(r'"\$\(location ([^)]+)\)"', body).group(1) for body in bodies} == tests
    assert all('main = "tests/pytest_main.py"' in body for body in bodies)
    assert set(rules("py_binary")) >= {"preprocess", "train", "evaluate", "export", "translate"}


def test_the_deps_are_the_imports():
    modules = generate_build.module_files(generate_build.sources())
    assert generate_build.imports_of("launch/sweep.py", modules) == [
        "launch/shared_files.py", "launch/sweep_space.py", "launch/sweep_trial.py"]
    body = rules("py_library")["launch_sweep"]
    assert re.findall(r'":([^"]+)"', body) == [
        "launch_shared_files", "launch_sweep_space", "launch_sweep_trial"]
    # a name the package itself defines depends on its __init__.py
    assert "models/__init__.py" in generate_build.imports_of("launch/vocabulary.py", modules)


def test_an_import_missing_from_build_fails_the_check(tmp_path, monkeypatch):
    module = os.path.join(REPO, "pipeline", "batches.py")
    original = open(module).read()
    files = generate_build.sources() + ["BUILD"]
    monkeypatch.setattr(generate_build, "REPO", str(tmp_path))
    for path in files:
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        (tmp_path / path).write_text(open(os.path.join(REPO, path)).read())
    for path in glob.glob(os.path.join(REPO, "tests", "test_*.py")):
        (tmp_path / os.path.relpath(path, REPO)).write_text("")
    (tmp_path / "pipeline" / "batches.py").write_text(original + "\nfrom models import losses\n")
    assert generate_build.main(["generate_build", "--check"]) == 1
    generate_build.main(["generate_build"])
    assert '":models_losses"' in rules_of(tmp_path / "BUILD")["pipeline_batches"]
    assert generate_build.main(["generate_build", "--check"]) == 0


def rules_of(path) -> dict[str, str]:
    text = open(path).read()
    return {re.search(r'name = "([^"]+)"', body).group(1): body
            for body in re.findall(r"py_library\((.*?)\n\)", text, flags=re.S)}
