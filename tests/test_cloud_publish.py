"""launch/cloud/publish.py against a GCS emulator on localhost, including lost races."""

import json
import os
import socket
import subprocess
import sys
import uuid
from http import HTTPStatus

import pytest

from launch import export_layout
from launch.cloud import files, local_bucket, model_card, publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def enforce_generation_preconditions(monkeypatch) -> None:
    """gcp-storage-emulator ignores ifGenerationMatch; make it answer 412 like GCS does.

    Its HTTP server handles one request at a time, so check-then-write is atomic here as
    it is in GCS. test_emulator_rejects_a_stale_generation shows the check is live.
    """
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def object_name(request):
        if "object_id" in request.params:
            return request.params["object_id"]
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data
        return (data.get("meta") or {}).get("name") if isinstance(data, dict) else None

    def current_generation(storage, bucket, name) -> int:
        try:
            return int(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return 0

    def guarded(handler):
        def handle(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            name = object_name(request) if wanted else None
            if name is not None and current_generation(
                    storage, request.params["bucket_name"], name) != int(wanted[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet",
                                         "errors": [{"reason": "conditionNotMet",
                                                     "message": "Precondition Failed"}]}})
                return None
            return handler(request, response, storage, *args, **kwargs)
        return handle

    originals = (objects.insert, objects.get, objects.download, objects.delete)
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in originals:
                monkeypatch.setitem(handlers, method, guarded(handler))
    monkeypatch.setattr(objects, "insert", guarded(objects.insert))  # the router's fallback


@pytest.fixture(scope="module")
def emulator():
    """gcp-storage-emulator on a free localhost port, with STORAGE_EMULATOR_HOST set."""
    from gcp_storage_emulator.server import create_server
    with pytest.MonkeyPatch.context() as patch:
        enforce_generation_preconditions(patch)
        port = free_port()
        server = create_server("127.0.0.1", port, in_memory=True)
        server.start()
        patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        files.client.cache_clear()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
            files.client.cache_clear()


@pytest.fixture
def gcs_bucket(emulator):
    from google.cloud import storage
    name = f"models-{uuid.uuid4().hex[:12]}"
    storage.Client(project="test").create_bucket(name)
    return files.bucket(name)


@pytest.fixture(params=["gcs", "local"])
def bucket(request, tmp_path_factory):
    """Each publishing test runs against the GCS emulator and against a local directory
    (launch/cloud/local_bucket.py), which must behave the same."""
    if request.param == "local":
        return local_bucket.LocalBucket(str(tmp_path_factory.mktemp("published")))
    return request.getfixturevalue("gcs_bucket")


def name_in(bucket, url: str) -> str:
    """The object name of a URL the pointer holds."""
    if isinstance(bucket, local_bucket.LocalBucket):
        return os.path.relpath(url, bucket.root)
    bucket_name, name = files.split_gcs(url)
    assert bucket_name == bucket.name
    return name


def bucket_flag(bucket) -> str:
    if isinstance(bucket, local_bucket.LocalBucket):
        return f"--bucket={bucket.root}"
    return f"--bucket=gs://{bucket.name}"


def write_saved_model(directory, *, tag: str, manifest: dict) -> None:
    """Stand-in SavedModel files (their bytes are opaque here) and the export manifest."""
    (directory / "variables").mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(b"graph-" + tag.encode())
    (directory / "variables" / "variables.index").write_bytes(b"index")
    (directory / publish.EXPORT_MANIFEST).write_text(json.dumps(manifest))


def make_workdir(root, *, bleu: float, step: int = 2000, wer: float | None = None,
                 tag: str = "run", legacy: bool = False) -> str:
    """What s2s-train + s2s-evaluate leave behind: export/best is an export root whose
    pointer names the best version, beside the version before it (launch/export_layout.py);
    legacy=True: the SavedModel itself, as exports were written before versioning."""
    workdir = root / tag
    best = workdir / "export" / "best"
    manifest = {"step": step, "split": "dev", "bleu": bleu}
    if legacy:
        write_saved_model(best, tag=tag, manifest=manifest)
    else:
        write_saved_model(best / "20260101T000000Z-step1000-0000aaaa", tag="older",
                          manifest={**manifest, "step": step // 2, "bleu": bleu - 5})
        write_saved_model(best / "20260102T000000Z-step2000-0000bbbb", tag=tag,
                          manifest=manifest)
        (best / export_layout.POINTER).write_text(json.dumps(
            {"version": "20260102T000000Z-step2000-0000bbbb", "step": step}))
    (workdir / "config.json").write_text(json.dumps(
        {"model": {"name": "transformer", "num_encoder_layers": 3},
         "train": {"num_steps": step}}))
    for split, shift in (("dev", 0.0), ("test", -1.0)):
        rows = [{"step": step // 2, "split": split, "bleu": bleu - 5, "chrf": 40.0,
                 "bleu_signature": SIGNATURE},
                {"step": step, "split": split, "bleu": bleu + shift, "chrf": 50.0 + shift,
                 "bleu_signature": SIGNATURE, **({"wer": wer} if wer is not None else {})}]
        (workdir / "eval" / split).mkdir(parents=True)
        (workdir / "eval" / split / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    data = root / f"{tag}-data"
    data.mkdir()
    (data / "metadata.json").write_text(json.dumps({
        "vocab_size": 8000, "tokenizer": {"sha256": "ab" * 32},
        "sources": {"train": "tsv:train.tsv"},
        "splits": {"train": {"read": 1000, "written": 990, "dropped": {"too_long": 10}},
                   "dev": {"read": 50, "written": 50, "dropped": {}}}}))
    return str(workdir)


def run_publish(tmp_path, bucket, *, bleu, tag, prefix="ende", **kwargs):
    workdir = make_workdir(tmp_path, bleu=bleu, tag=tag)
    candidate = publish.load_candidate(workdir=workdir, data_dir=workdir + "-data")
    return publish.publish(candidate, bucket=bucket, prefix=prefix, **kwargs)


def pointer(bucket, prefix="ende") -> dict:
    return json.loads(bucket.blob(f"{prefix}/latest.json").download_as_bytes())


def version_dirs(bucket, prefix="ende") -> set[str]:
    names = [b.name for b in bucket.client.list_blobs(bucket.name, prefix=f"{prefix}/models/")]
    return {name.split("/")[2] for name in names}


def assert_complete(bucket, record: dict) -> None:
    """The pointer names a version whose files are all there."""
    base = name_in(bucket, record["model_dir"])
    manifest = json.loads(bucket.blob(f"{base}/{publish.EXPORT_MANIFEST}").download_as_bytes())
    assert manifest["bleu"] == record["metrics"]["dev"]["bleu"]
    assert bucket.blob(f"{base}/variables/variables.index").exists()
    assert not bucket.blob(f"{base}/{export_layout.POINTER}").exists()  # a plain SavedModel
    assert bucket.blob(name_in(bucket, record["card"])).exists()


def test_both_destinations_reject_a_stale_generation(bucket):
    from google.api_core import exceptions
    blob = bucket.blob("x.json")
    blob.upload_from_string("1", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("x.json").upload_from_string("2", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("x.json").upload_from_string("3", if_generation_match=blob.generation + 1)
    bucket.blob("x.json").upload_from_string("4", if_generation_match=blob.generation)
    assert bucket.blob("x.json").download_as_bytes() == b"4"


def test_first_publish_uploads_model_metrics_card_then_pointer(tmp_path, bucket):
    outcome = run_publish(tmp_path, bucket, bleu=30.0, tag="first")
    assert outcome.status == "published"
    record = pointer(bucket)
    assert record == outcome.published
    assert record["score"] == 30.0 and record["previous_version"] is None
    assert record["metrics"]["dev"]["step"] == 2000 and record["metrics"]["test"]["bleu"] == 29.0
    assert_complete(bucket, record)
    base = name_in(bucket, record["model_dir"])
    assert base.rsplit("/", 1)[1].isdigit()  # TF Serving's integer version directory
    assert bucket.blob(f"{base}/saved_model.pb").download_as_bytes() == b"graph-first"
    metrics = json.loads(bucket.blob(f"{base}/metrics.json").download_as_bytes())
    assert metrics["dev"]["bleu"] == 30.0
    card = bucket.blob(f"{base}/MODEL_CARD.md").download_as_text()
    assert f"sacreBLEU signature: `{SIGNATURE}`" in card
    assert "| dev | 2000 | 30.00 | 50.00 |" in card and "| test | 2000 | 29.00 | 49.00 |" in card
    assert "| train | 1000 | 990 | 10 |" in card and "8000 SentencePiece pieces" in card
    assert '"num_encoder_layers": 3' in card
    assert record["published_at"][:10] in card and "first published model" in card


def test_a_model_that_is_not_better_is_not_published(tmp_path, bucket):
    first = run_publish(tmp_path, bucket, bleu=30.0, tag="a")
    for bleu, tag in ((29.5, "worse"), (30.0, "tie")):
        outcome = run_publish(tmp_path, bucket, bleu=bleu, tag=tag)
        assert outcome.status == "kept"
        assert outcome.published["version"] == first.published["version"]
    assert pointer(bucket) == first.published
    assert version_dirs(bucket) == {first.published["version"]}


def test_a_better_model_moves_the_pointer_and_names_what_it_replaced(tmp_path, bucket):
    first = run_publish(tmp_path, bucket, bleu=30.0, tag="a")
    second = run_publish(tmp_path, bucket, bleu=31.5, tag="b")
    assert second.status == "published"
    record = pointer(bucket)
    assert record["score"] == 31.5 and record["previous_version"] == first.published["version"]
    assert_complete(bucket, record)
    card = bucket.blob(name_in(bucket, record["card"])).download_as_text()
    assert f"31.50 beats 30.00 of the model it replaces (`{first.published['version']}`)" in card


def test_error_rates_compare_lower_is_better(tmp_path, bucket):
    make = lambda tag, wer: publish.load_candidate(  # noqa: E731
        workdir=make_workdir(tmp_path, bleu=10.0, wer=wer, tag=tag))
    assert publish.publish(make("g1", 20.0), bucket=bucket, prefix="g2p",
                           metric="wer").status == "published"
    assert publish.publish(make("g2", 25.0), bucket=bucket, prefix="g2p",
                           metric="wer").status == "kept"
    assert publish.publish(make("g3", 18.0), bucket=bucket, prefix="g2p",
                           metric="wer").status == "published"
    assert pointer(bucket, "g2p")["metrics"]["dev"]["wer"] == 18.0


def race(monkeypatch, rival):
    """Runs `rival()` (another publisher) right after this publisher's first pointer read."""
    real_read = publish.read_pointer
    calls = []

    def read_then_let_the_rival_in(*args, **kwargs):
        result = real_read(*args, **kwargs)
        calls.append(result)
        if len(calls) == 1:
            with monkeypatch.context() as inner:
                inner.setattr(publish, "read_pointer", real_read)
                rival()
        return result

    monkeypatch.setattr(publish, "read_pointer", read_then_let_the_rival_in)
    return calls


def test_losing_the_race_to_a_better_model_gives_up_cleanly(tmp_path, bucket, monkeypatch):
    run_publish(tmp_path, bucket, bleu=30.0, tag="old")
    rival = {}
    calls = race(monkeypatch, lambda: rival.update(
        outcome=run_publish(tmp_path, bucket, bleu=33.0, tag="rival")))
    outcome = run_publish(tmp_path, bucket, bleu=32.0, tag="loser")
    assert len(calls) == 2  # the 412 made it read and compare again
    assert outcome.status == "lost"
    record = pointer(bucket)
    assert record["version"] == rival["outcome"].published["version"] and record["score"] == 33.0
    assert_complete(bucket, record)
    assert len(version_dirs(bucket)) == 2  # the loser deleted its upload


def test_losing_the_race_to_a_worse_model_retries_and_wins(tmp_path, bucket, monkeypatch):
    rival = {}
    calls = race(monkeypatch, lambda: rival.update(
        outcome=run_publish(tmp_path, bucket, bleu=28.0, tag="rival")))
    outcome = run_publish(tmp_path, bucket, bleu=34.0, tag="winner")
    assert len(calls) == 2  # the first pointer write was refused
    assert rival["outcome"].status == "published" and outcome.status == "published"
    record = pointer(bucket)
    assert record["score"] == 34.0
    assert record["previous_version"] == rival["outcome"].published["version"]
    assert_complete(bucket, record)


def test_concurrent_publisher_processes_leave_a_valid_pointer_to_the_best(tmp_path, bucket,
                                                                          emulator):
    run_publish(tmp_path, bucket, bleu=20.0, tag="base")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator, "PYTHONPATH": REPO}
    processes = []
    for bleu in (24.0, 26.0, 25.0):
        workdir = make_workdir(tmp_path, bleu=bleu, tag=f"proc{bleu:g}")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "launch.cloud.publish", f"--workdir={workdir}",
             f"--data_dir={workdir}-data", bucket_flag(bucket), "--prefix=ende"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = [p.communicate(timeout=120) + (p.returncode,) for p in processes]
    for out, err, code in results:
        assert code == 0, err
        assert json.loads(out)["status"] in ("published", "kept", "lost")
    record = pointer(bucket)
    assert record["score"] == 26.0
    assert_complete(bucket, record)


def test_publishes_from_a_gcs_workdir(tmp_path, gcs_bucket):
    bucket = gcs_bucket
    local = make_workdir(tmp_path, bleu=27.0, tag="remote")
    for relative in files.list_files(local):
        bucket.blob(f"runs/remote/{relative}").upload_from_filename(os.path.join(local, relative))
    workdir = f"gs://{bucket.name}/runs/remote"
    outcome = publish.publish(publish.load_candidate(workdir=workdir), bucket=bucket,
                              prefix="ende")
    assert outcome.status == "published"
    assert_complete(bucket, pointer(bucket))
    assert "metadata.json not available" in bucket.blob(
        files.split_gcs(pointer(bucket)["card"])[1]).download_as_text()


def cli_publish(*args):
    return subprocess.run([sys.executable, "-m", "launch.cloud.publish", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_cli_reports_a_workdir_without_export_in_one_line(tmp_path, bucket, emulator):
    result = cli_publish(f"--workdir={tmp_path}", bucket_flag(bucket))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "is not an s2s-pipeline export (no current.json and no s2s_export.json): no " \
           "exported model; run s2s-evaluate --split=dev first" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "before_versioning"])
def test_the_candidate_is_the_version_the_pointer_names(tmp_path, legacy):
    workdir = make_workdir(tmp_path, bleu=30.0, legacy=legacy)
    candidate = publish.load_candidate(workdir=workdir)
    best = os.path.join(workdir, "export", "best")
    assert candidate.export_dir == (best if legacy else
                                    f"{best}/20260102T000000Z-step2000-0000bbbb")
    assert open(os.path.join(candidate.export_dir, "saved_model.pb"), "rb").read() == b"graph-run"
    assert candidate.metrics["dev"]["step"] == 2000


def test_a_pointer_to_a_missing_version_is_reported(tmp_path):
    workdir = make_workdir(tmp_path, bleu=30.0)
    pointer_path = os.path.join(workdir, "export", "best", export_layout.POINTER)
    open(pointer_path, "w").write(json.dumps({"version": "20260103T000000Z-step3000-0000cccc"}))
    with pytest.raises(publish.PublishError, match="which has no s2s_export.json"):
        publish.load_candidate(workdir=workdir)


def test_cli_reports_a_missing_bucket_in_one_line(tmp_path, emulator):
    workdir = make_workdir(tmp_path, bleu=30.0)
    result = cli_publish(f"--workdir={workdir}", "--bucket=no-such-bucket-here")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{publish.PROG}: error: 404 ")
    assert result.stderr.count("\n") == 1


def test_cli_refuses_to_overwrite_a_corrupt_pointer(tmp_path, bucket, emulator):
    bucket.blob("ende/latest.json").upload_from_string("{not json")
    workdir = make_workdir(tmp_path, bleu=30.0)
    result = cli_publish(f"--workdir={workdir}", bucket_flag(bucket), "--prefix=ende")
    assert result.returncode == 2, result.stderr
    assert "is not a valid pointer" in result.stderr and "Traceback" not in result.stderr
    assert bucket.blob("ende/latest.json").download_as_bytes() == b"{not json"


def test_wait_for_returns_once_the_file_exists(tmp_path):
    target = tmp_path / "config.json"
    assert not files.wait_for(str(target), timeout=0.2, poll_seconds=0.05)
    target.write_text("{}")
    assert files.wait_for(str(target), timeout=0.2, poll_seconds=0.05)


def test_the_model_card_names_each_side_of_separate_vocabularies():
    metadata = {"vocab_size": 68, "source_vocab_size": 60, "target_vocab_size": 68,
                "tokenizer": {"shared": False, "sha256": "cd" * 32}}
    section = model_card.data_section(data_dir="gs://b/data", metadata=metadata)
    assert "separate SentencePiece models, source 60 and target 68 pieces" in section
    shared = model_card.data_section(data_dir="gs://b/data", metadata={
        "vocab_size": 122, "tokenizer": {"shared": True, "sha256": "ef" * 32}})
    assert "122 SentencePiece pieces, shared" in shared


def test_a_model_scored_on_another_dev_set_is_not_compared(tmp_path, bucket):
    run_publish(tmp_path, bucket, bleu=30.0, tag="pinned", dev_sha256="a" * 64)
    assert pointer(bucket)["dev_sha256"] == "a" * 64
    before = pointer(bucket)
    with pytest.raises(publish.PublishError,
                       match="was scored on the dev set with sha256 aaaaaaaaaaaa..., this run "
                             "on bbbbbbbbbbbb...: the scores cannot be compared"):
        run_publish(tmp_path, bucket, bleu=40.0, tag="other", dev_sha256="b" * 64)
    assert pointer(bucket) == before
