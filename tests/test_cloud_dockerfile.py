"""The one image every launcher uses: Dockerfile, .dockerignore, setup.py and pins agree."""

import ast
import os
import re

from setuptools import find_packages

from launch.cloud import commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerfile_stages() -> list[dict]:
    """[{"from": ..., "name": ..., "instructions": [(KEYWORD, text), ...]}] in file order."""
    text = open(os.path.join(REPO, "Dockerfile")).read().replace("\\\n", " ")
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            stages.append({"from": image.strip(), "name": name.strip(), "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, rest.strip()))
    return stages


def setup_call() -> dict:
    """The keyword arguments of setup(...) in setup.py, literal where they are literal."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "id", "") == "setup"]
    return {k.arg: k.value for k in call.keywords}


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in open(os.path.join(REPO, "constraints.txt")):
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def requirement_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


def test_every_stage_builds_on_python_slim_and_the_default_target_has_no_entrypoint():
    stages = dockerfile_stages()
    names = [s["name"] for s in stages]
    assert names[-1] == "s2s-pipeline"  # the last stage is what `docker build .` produces
    base = stages[names.index("base")]
    assert base["from"] == "python:3.11-slim"
    assert {s["from"] for s in stages[names.index("base") + 1:]} == {"base"}
    assert not [i for i in stages[-1]["instructions"] if i[0] == "ENTRYPOINT"]
    worker = stages[names.index("dataflow-worker")]
    assert ("ENTRYPOINT", '["/opt/apache/beam/boot"]') in worker["instructions"]
    assert ("WORKDIR", "/app") in base["instructions"] and ("COPY", ". .") in base["instructions"]


def test_installs_use_the_constraints_and_extras_that_setup_py_defines():
    base = [s for s in dockerfile_stages() if s["name"] == "base"][0]
    installs = [text for keyword, text in base["instructions"]
                if keyword == "RUN" and "pip install" in text and "$TPU_PACKAGES" not in text]
    assert installs and all("-c constraints.txt" in text or "--no-deps" in text
                            for text in installs)
    extras_used = set()
    for text in installs:
        for group in re.findall(r"\.\[([a-z,-]+)\]", text):
            extras_used |= set(group.split(","))
    extras = setup_call()["extras_require"]
    defined = {key.value for key in extras.keys}
    assert extras_used == {"preprocess", "evaluate", "dataflow", "cloud"}
    assert extras_used <= defined


def test_the_dependency_layer_stubs_exactly_the_packages_setup_py_installs():
    include = ast.literal_eval(setup_call()["packages"].keywords[0].value)
    packages = {p.replace(".", "/") for p in find_packages(REPO, include=include)}
    base = [s for s in dockerfile_stages() if s["name"] == "base"][0]
    [loop] = [t for k, t in base["instructions"] if k == "RUN" and "for package in" in t]
    stubs = set(re.search(r"for package in (.*?);", loop).group(1).split())
    assert stubs == packages


def test_launchers_call_console_scripts_that_setup_py_installs():
    scripts = {entry.value.split("=")[0] for entry in
               setup_call()["entry_points"].values[0].elts}
    used = {commands.train_command(config="c", data_dir="d", workdir="w", strategy="tpu")[0],
            commands.evaluate_command(workdir="w", data_dir="d", split="dev")[0],
            commands.preprocess_command(train="t", output_dir="o", split_fractions="dev:1")[0]}
    assert used == {"s2s-train", "s2s-evaluate", "s2s-preprocess"} and used <= scripts


def test_beam_worker_image_matches_the_pinned_beam_and_every_extra_is_pinned():
    text = open(os.path.join(REPO, "Dockerfile")).read()
    pins = constraint_pins()
    assert re.search(r"ARG BEAM_VERSION=(\S+)", text).group(1) == pins["apache-beam"]
    assert "apache/beam_python3.11_sdk:${BEAM_VERSION}" in text
    source = open(os.path.join(REPO, "setup.py")).read()
    lists = {t.id: ast.literal_eval(n.value) for n in ast.parse(source).body
             if isinstance(n, ast.Assign) for t in n.targets if isinstance(n.value, ast.List)}
    for extra in ("CLOUD", "ORCHESTRATE"):
        for requirement in lists[extra]:
            assert requirement_name(requirement) in pins, requirement


def test_dockerignore_keeps_environments_and_history_out_of_the_image():
    ignored = {line.strip() for line in open(os.path.join(REPO, ".dockerignore"))
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "**/__pycache__", "*.egg-info"} <= ignored
    assert not {"setup.py", "constraints.txt", "launch", "pipeline"} & ignored
