"""launch/export_lib.py and launch/export_layout.py: versions, the pointer, failures, readers.

The writers here write small stand-in files; tests/test_evaluator.py exports real models.
"""

import json
import os
import subprocess
import sys
import threading

import pytest

from launch import export_layout, export_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def writer(tag: str, *, manifest: bool = True):
    """A stand-in model: one file holding `tag`, then the manifest."""
    def write(directory):
        os.makedirs(directory)
        open(os.path.join(directory, "model.bin"), "w").write(tag)
        if manifest:
            export_lib.write_manifest(directory, {"tag": tag})
    return write


def current_tag(root) -> str:
    return open(os.path.join(export_lib.resolve(root), "model.bin")).read()


def versions(root) -> list[str]:
    return sorted(n for n in os.listdir(root) if export_layout.is_version(n))


class Crash(BaseException):
    """Stands for the process dying: nothing catches it."""


def test_each_publish_adds_a_version_and_moves_the_pointer_keeping_the_one_before(tmp_path):
    root = str(tmp_path / "best")
    first = export_lib.publish_version(root, write=writer("a"), step=100)
    assert export_lib.resolve(root) == first and current_tag(root) == "a"
    assert export_layout.INTEGER_VERSION.match(os.path.basename(first))
    second = export_lib.publish_version(root, write=writer("b"), step=200)
    pointer = json.load(open(os.path.join(root, export_lib.POINTER)))
    assert pointer["version"] == os.path.basename(second) and pointer["step"] == 200
    assert pointer["previous_version"] == os.path.basename(first)
    assert int(pointer["version"]) > int(os.path.basename(first))  # TF Serving: the highest
    assert versions(root) == sorted(os.path.basename(p) for p in (first, second))
    export_lib.publish_version(root, write=writer("c"), step=300)
    assert current_tag(root) == "c"
    assert os.path.basename(first) not in versions(root) and len(versions(root)) == 2
    assert sorted(os.listdir(root)) == sorted(versions(root) + [export_lib.POINTER])


@pytest.mark.parametrize("point", ["writing", "before_manifest", "pointer", "prune"])
def test_a_failure_at_any_step_leaves_a_complete_model_in_force(tmp_path, monkeypatch, point):
    root = str(tmp_path / "best")
    export_lib.publish_version(root, write=writer("old"), step=100)

    def crash(*args, **kwargs):
        raise Crash(point)

    def half_written(directory):
        os.makedirs(directory)
        open(os.path.join(directory, "model.bin"), "w").write("half")
        raise Crash(point)

    write = writer("new")
    if point == "writing":
        write = half_written
    elif point == "before_manifest":
        write = writer("new", manifest=False)
    elif point == "pointer":
        monkeypatch.setattr(export_lib.shared_files, "write_text_atomically", crash)
    else:
        monkeypatch.setattr(export_lib, "prune", crash)
    with pytest.raises((Crash, RuntimeError)):
        export_lib.publish_version(root, write=write, step=200)
    monkeypatch.undo()
    assert current_tag(root) == ("new" if point == "prune" else "old")
    assert export_lib.read_manifest(root)["tag"] == current_tag(root)
    # The next publish clears what the failure left behind.
    export_lib.publish_version(root, write=writer("next"), step=300)
    assert current_tag(root) == "next" and len(versions(root)) == 2
    assert not [n for n in os.listdir(root) if ".tmp-" in n or n.startswith("_lease-")]


def test_concurrent_publishers_never_leave_the_pointer_on_a_missing_version(tmp_path):
    root = str(tmp_path / "best")
    errors = []

    def publish(tag):
        try:
            for index in range(3):
                export_lib.publish_version(root, write=writer(f"{tag}{index}"), step=index)
                assert current_tag(root)[0] in "xy"
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=publish, args=(tag,)) for tag in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert current_tag(root) in ("x2", "y2")
    assert len(versions(root)) == 2


def test_a_root_written_before_versioning_resolves_and_migrates(tmp_path):
    root = tmp_path / "best"
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"old graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / export_lib.MANIFEST).write_text(json.dumps({"step": 100}))
    assert export_lib.resolve(str(root)) == str(root)
    assert export_lib.read_manifest(str(root))["step"] == 100
    export_lib.publish_version(str(root), write=writer("new"), step=200)
    assert current_tag(str(root)) == "new"
    # The stale top-level model is gone: tf.saved_model.load(root) cannot load it by mistake.
    assert sorted(os.listdir(root)) == sorted(versions(str(root)) + [export_lib.POINTER])


def test_what_is_not_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(export_lib.NotAnExportError, match="no current.json and no"):
        export_lib.resolve(str(tmp_path))
    (tmp_path / export_lib.POINTER).write_text("{not json")
    with pytest.raises(export_lib.NotAnExportError, match="not a valid export pointer"):
        export_lib.resolve(str(tmp_path))
    (tmp_path / export_lib.POINTER).write_text(json.dumps({"version": "../elsewhere"}))
    with pytest.raises(export_lib.NotAnExportError, match="invalid version"):
        export_lib.resolve(str(tmp_path))
    (tmp_path / export_lib.POINTER).write_text(json.dumps({"version": "gone"}))
    with pytest.raises(export_lib.NotAnExportError, match="names gone, which has no"):
        export_lib.resolve(str(tmp_path))


def test_a_ctranslate2_export_is_refused_as_a_saved_model(tmp_path):
    root = str(tmp_path / "ct2")
    path = export_lib.publish_version(root, write=lambda d: export_lib.write_manifest(
        d, {"format": "ctranslate2"}), step=1)
    with pytest.raises(export_lib.NotAnExportError,
                       match=f"ctranslate2.Translator\\('{path}'\\)"):
        export_lib.load_translator(root)


def test_the_layout_reader_works_with_any_file_functions():
    """launch/cloud reads roots through google-cloud-storage, not tf.io.gfile."""
    store = {"gs://b/w/export/best/current.json": json.dumps({"version": "v1"}),
             "gs://b/w/export/best/v1/s2s_export.json": "{}"}

    def read_text(path):
        if path not in store:
            raise FileNotFoundError(path)
        return store[path]

    assert export_layout.resolve("gs://b/w/export/best/", read_text=read_text,
                                 exists=store.__contains__) == "gs://b/w/export/best/v1"


def test_the_export_library_does_not_import_the_evaluator():
    script = ("import sys\nfrom launch import export_lib\n"
              "print(sorted(m for m in sys.modules if m.startswith('launch.')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-2000:]
    imported = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our own output
    assert imported == ["launch.export_layout", "launch.export_lib", "launch.shared_files"]
