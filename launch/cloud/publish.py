"""Publish a trained model only if it beats the published one; move `latest.json` atomically.

    python -m launch.cloud.publish --workdir=gs://B/runs/X/work --data_dir=gs://B/runs/X/data \
        --bucket=my-models --prefix=ende [--dry-run]

Layout under gs://BUCKET/PREFIX/ (models/ is TF Serving's: `tensorflow_model_server
--model_base_path=gs://BUCKET/PREFIX/models` serves the highest <N>, the published one):
    latest.json                     the pointer: version, model_dir, metrics, date
    models/<N>/saved_model.pb ...   the SavedModel WORKDIR/export/best points to (the best
                                    dev checkpoint; layout: launch/export_layout.py), with
                                    its warm-start bundle (launch/warm_start.py)
    models/<N>/metrics.json         dev (and test) rows of metrics.jsonl at that step
    models/<N>/MODEL_CARD.md        data, configuration, metrics + sacreBLEU signature
    models/<N>/publisher.json       who claimed the number <N> (written first)

N is the UTC time as YYYYMMDDHHMMSS, above every published number; a publisher claims it
by creating publisher.json if absent, and takes the next number when another did.

The pointer is replaced with an `if_generation_match` precondition on the generation that
was read and compared against. If another publisher moved it in between, the write fails
(HTTP 412); this one re-reads and compares again, and either retries or, when the other
model is at least as good, deletes its own upload and stops cleanly. A version directory
is complete before any pointer names it.
"""

import dataclasses
import datetime
import json
import os
import socket
import sys
from typing import Sequence

from launch import export_layout
from launch import metrics as metrics_lib
from launch.cloud import cli, files, local_bucket, model_card

PROG = "python -m launch.cloud.publish"
POINTER = "latest.json"
CLAIM = "publisher.json"  # models/<N>/publisher.json: claims the number N
EXPORT_MANIFEST = export_layout.MANIFEST  # in every exported model directory
METRICS = tuple(metrics_lib.CORPUS_METRICS)
LOWER_IS_BETTER = tuple(name for name, higher in metrics_lib.CORPUS_METRICS.items()
                        if not higher)


class PublishError(cli.LaunchError):
    """The workdir or the published pointer is not in a state we can publish from."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A trained run: its best dev export and the metrics measured at that step."""
    workdir: str
    data_dir: str
    export_dir: str
    metrics: dict  # split -> metrics.jsonl row; "dev" always present
    config: dict
    metadata: dict | None


@dataclasses.dataclass(frozen=True)
class Pointer:
    record: dict | None  # None: nothing published yet
    generation: int  # the object generation read; 0 means "must not exist yet"


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # "published" | "kept" (not better) | "lost" (a better one landed first)
    score: float
    published: dict | None  # the pointer record in force afterwards


def read_json(path: str, *, what: str):
    try:
        return json.loads(files.read_text(path))
    except FileNotFoundError as error:
        raise PublishError(f"{path} not found: {what}") from error
    except ValueError as error:
        raise PublishError(f"{path} is not valid JSON: {error}") from error


def read_metrics(path: str) -> list[dict]:
    try:
        text = files.read_text(path)
    except FileNotFoundError:
        return []
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as error:
        raise PublishError(f"{path} has a line that is not JSON: {error}") from error


def load_candidate(*, workdir: str, data_dir: str = "") -> Candidate:
    """Reads the model WORKDIR/export/best points to and the eval rows of its step."""
    export_dir = resolve_export(files.join(workdir, "export", "best"))
    manifest = read_json(files.join(export_dir, EXPORT_MANIFEST),
                         what="no exported model; run s2s-evaluate --split=dev first")
    step = manifest.get("step")
    metrics = {}
    for split in ("dev", "test"):
        path = files.join(workdir, "eval", split, "metrics.jsonl")
        rows = [row for row in read_metrics(path) if row.get("step") == step]
        if rows:
            metrics[split] = rows[-1]
        elif split == "dev":
            raise PublishError(f"{path} has no row for step {step}, the exported checkpoint")
    config = read_json(files.join(workdir, "config.json"), what="not an s2s-train workdir")
    metadata = None
    if data_dir:
        metadata = read_json(files.join(data_dir, "metadata.json"),
                             what="not an s2s-preprocess output directory")
    return Candidate(workdir=workdir, data_dir=data_dir, export_dir=export_dir,
                     metrics=metrics, config=config, metadata=metadata)


def resolve_export(root: str) -> str:
    """The model directory an export root points to (or the root itself, if written
    before versioning)."""
    try:
        return export_layout.resolve(root, read_text=files.read_text, exists=files.exists)
    except export_layout.NotAnExportError as error:
        raise PublishError(f"{error}: no exported model; run s2s-evaluate --split=dev "
                           "first") from error


def score(row: dict, metric: str) -> float:
    if metric not in row:
        raise PublishError(f"the dev metrics have no {metric!r} (they have "
                           f"{', '.join(k for k in METRICS if k in row)})")
    return float(row[metric])


def is_better(new: float, old: float | None, *, metric: str) -> bool:
    """Strictly better; a tie keeps the published model."""
    if old is None:
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


def read_pointer(bucket, name: str, *, attempts: int = 5) -> Pointer:
    """The pointer and the generation its content belongs to (re-read if it changes)."""
    from google.api_core import exceptions
    for _ in range(attempts):
        blob = bucket.get_blob(name)
        if blob is None:
            return Pointer(record=None, generation=0)
        generation = int(blob.generation)
        try:
            data = blob.download_as_bytes(if_generation_match=generation)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            continue  # replaced or deleted between the metadata read and the download
        return Pointer(record=parse_pointer(data, url=object_url(bucket, name)),
                       generation=generation)
    raise PublishError(f"{object_url(bucket, name)} kept changing while being read")


def parse_pointer(data: bytes, *, url: str) -> dict:
    try:
        record = json.loads(data)
        record["version"], record["metrics"]["dev"]
    except (ValueError, KeyError, TypeError) as error:
        raise PublishError(f"{url} is not a valid pointer ({error!r}); fix or delete it") \
            from error
    return record


def copy_file(source: str, bucket, name: str) -> None:
    """Local file or gs:// object -> gs://bucket/name; never overwrites (generation 0)."""
    if files.is_gcs(source):
        source_bucket, source_name = files.split_gcs(source)
        origin = files.bucket(source_bucket)
        origin.copy_blob(origin.blob(source_name), bucket, name, if_generation_match=0,
                         preserve_acl=False)
    else:
        bucket.blob(name).upload_from_filename(source, if_generation_match=0)


def claim_version(bucket, *, models: str, now: datetime.datetime, attempts: int = 20) -> str:
    """A version number nobody else uses: created-if-absent publisher.json decides."""
    from google.api_core import exceptions
    number = int(export_layout.next_version(published_numbers(bucket, models=models), now=now))
    for _ in range(attempts):
        try:
            bucket.blob(f"{models}/{number}/{CLAIM}").upload_from_string(
                json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "claimed_at": now.isoformat(timespec="seconds")}) + "\n",
                content_type="application/json", if_generation_match=0)
            return str(number)
        except exceptions.PreconditionFailed:
            number += 1  # another publisher took it
    raise PublishError(f"could not claim a version number under {object_url(bucket, models)}")


def published_numbers(bucket, *, models: str) -> list[str]:
    """The integer version names under `models/`."""
    blobs = bucket.client.list_blobs(bucket.name, prefix=f"{models}/", delimiter="/")
    list(blobs)  # the prefixes are filled in as the pages are read
    return [prefix[len(models) + 1:].strip("/") for prefix in blobs.prefixes]


def upload_version(bucket, *, base: str, candidate: Candidate) -> None:
    """The SavedModel and metrics.json under `base`, a claimed version: saved_model.pb
    after the variables (TF Serving loads a version once it sees that file), the
    manifest last."""
    names = files.list_files(candidate.export_dir)
    if EXPORT_MANIFEST not in names:
        raise PublishError(f"{candidate.export_dir} lost its {EXPORT_MANIFEST} while publishing")
    last = {"saved_model.pb": 1, EXPORT_MANIFEST: 2}
    for relative in sorted(names, key=lambda name: last.get(name, 0)):
        copy_file(files.join(candidate.export_dir, relative), bucket, f"{base}/{relative}")
    bucket.blob(f"{base}/metrics.json").upload_from_string(
        json.dumps(candidate.metrics, indent=2, sort_keys=True) + "\n",
        content_type="application/json", if_generation_match=0)


def delete_version(bucket, *, base: str) -> None:
    for blob in bucket.client.list_blobs(bucket.name, prefix=f"{base}/"):
        blob.delete()


def move_pointer(bucket, name: str, *, record: dict, generation: int) -> bool:
    """Writes the pointer only if it is still at `generation`; False when another won."""
    from google.api_core import exceptions
    blob = bucket.blob(name)
    blob.cache_control = "no-cache"  # readers over HTTP never get a stale pointer
    try:
        blob.upload_from_string(json.dumps(record, indent=2, sort_keys=True) + "\n",
                                content_type="application/json",
                                if_generation_match=generation)
    except exceptions.PreconditionFailed:
        return False
    return True


def publish(candidate: Candidate, *, bucket, prefix: str, metric: str = "bleu",
            max_attempts: int = 5, now: datetime.datetime | None = None,
            dev_sha256: str = "") -> Outcome:
    """Compare, upload, move the pointer; on a lost race re-read and compare again.

    `dev_sha256` pins the dev set the score was measured on: it is recorded with the
    model, and a published model scored on another dev set is not compared against."""
    new = score(candidate.metrics["dev"], metric)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    pointer_name, models = layout(prefix)
    uploaded, version, base = False, "", ""
    for _ in range(max_attempts):
        pointer = read_pointer(bucket, pointer_name)
        if pointer.record and pointer.record.get("version") == version:
            return Outcome("published", new, pointer.record)  # an earlier write did land
        check_same_dev_set(pointer.record, dev_sha256=dev_sha256)
        old = score(pointer.record["metrics"]["dev"], metric) if pointer.record else None
        if not is_better(new, old, metric=metric):
            # Keep our upload if a write of ours landed unseen and is now the previous model.
            if uploaded and pointer.record.get("previous_version") != version:
                delete_version(bucket, base=base)
            return Outcome("lost" if uploaded else "kept", new, pointer.record)
        if not uploaded:
            version = claim_version(bucket, models=models, now=now)
            base = f"{models}/{version}"
            upload_version(bucket, base=base, candidate=candidate)
            uploaded = True
        record = pointer_record(candidate, bucket=bucket, base=base, version=version,
                                metric=metric, now=now, previous=pointer.record)
        if dev_sha256:
            record["dev_sha256"] = dev_sha256
        bucket.blob(f"{base}/MODEL_CARD.md").upload_from_string(
            card(candidate, record=record, previous=pointer.record),
            content_type="text/markdown")
        if move_pointer(bucket, pointer_name, record=record, generation=pointer.generation):
            return Outcome("published", new, record)
        print("publish: the pointer moved while publishing; comparing again", file=sys.stderr)
    if uploaded:
        delete_version(bucket, base=base)
    raise PublishError(f"gave up after {max_attempts} attempts: {object_url(bucket, '')}"
                       f"{pointer_name} kept changing")


def layout(prefix: str) -> tuple[str, str]:
    """The pointer's object name and the folder of the versions, under `prefix`."""
    pointer_name = f"{prefix.strip('/')}/{POINTER}" if prefix.strip("/") else POINTER
    return pointer_name, pointer_name[:-len(POINTER)] + "models"


def plan(candidate: Candidate, *, root: str, prefix: str, metric: str = "bleu",
         dev_sha256: str = "") -> list[str]:
    """--dry-run: what publish() would do, decided by reads alone (the same comparison,
    the same dev-set check); nothing is claimed, uploaded or moved, no lock file made."""
    new = score(candidate.metrics["dev"], metric)
    pointer_name, models = layout(prefix)
    pointer_url = files.join(root, pointer_name)
    try:
        record = parse_pointer(files.read_bytes(pointer_url), url=pointer_url)
    except FileNotFoundError:
        record = None
    check_same_dev_set(record, dev_sha256=dev_sha256)
    old = score(record["metrics"]["dev"], metric) if record else None
    published = (f"{record['version']} ({metric} {old:.2f})" if record
                 else "nothing published yet")
    lines = [f"# candidate: {candidate.export_dir} ({metric} {new:.2f}); published: {published}"]
    if not is_better(new, old, metric=metric):
        return lines + [f"would keep {record['version']}: {metric} {new:.2f} is not better "
                        f"than {old:.2f}; nothing to upload"]
    uploads = [CLAIM, *files.list_files(candidate.export_dir), "metrics.json", "MODEL_CARD.md"]
    return lines + [f"would upload to {files.join(root, models)}/<N>/: {', '.join(uploads)}",
                    f"would move {pointer_url} to version <N>"]


def check_same_dev_set(record: dict | None, *, dev_sha256: str) -> None:
    """Scores on different dev sets say nothing about which model is better."""
    pinned = (record or {}).get("dev_sha256")
    if pinned and dev_sha256 and pinned != dev_sha256:
        raise PublishError(f"the published model {record['version']} was scored on the dev "
                           f"set with sha256 {pinned[:12]}..., this run on {dev_sha256[:12]}"
                           "...: the scores cannot be compared; use the pinned dev set, or "
                           "publish to a new prefix")


def object_url(bucket, name: str) -> str:
    """gs://BUCKET/NAME, or the file's path in a local publish directory."""
    if isinstance(bucket, local_bucket.LocalBucket):
        return bucket.url(name)
    return f"gs://{bucket.name}/{name}"


def destination_root(bucket: str) -> str:
    """--bucket as gs://NAME (from a name or gs://name) or an absolute local directory
    (from a path or file://path)."""
    if bucket.startswith(("/", ".", "file://")):
        return os.path.abspath(bucket.removeprefix("file://"))
    name = bucket.removeprefix("gs://").strip("/")
    if not name or "/" in name:
        raise PublishError(f"--bucket={bucket!r} must be a bucket name; put folders in "
                           "--prefix")
    return f"gs://{name}"


def open_destination(bucket: str):
    """The GCS bucket, or a local directory laid out the same way."""
    root = destination_root(bucket)
    if files.is_gcs(root):
        return files.bucket(files.split_gcs(root)[0])
    return local_bucket.LocalBucket(root)


def pointer_record(candidate: Candidate, *, bucket, base: str, version: str, metric: str,
                   now: datetime.datetime, previous: dict | None) -> dict:
    url = object_url(bucket, base)
    return {"version": version, "model_dir": url,
            "card": f"{url}/MODEL_CARD.md", "metrics_file": f"{url}/metrics.json",
            "metric": metric, "score": score(candidate.metrics["dev"], metric),
            "metrics": candidate.metrics, "published_at": now.isoformat(timespec="seconds"),
            "workdir": candidate.workdir, "data_dir": candidate.data_dir,
            "previous_version": previous["version"] if previous else None}


def card(candidate: Candidate, *, record: dict, previous: dict | None) -> str:
    return model_card.render(version=record["version"], published_at=record["published_at"],
                             workdir=candidate.workdir, data_dir=candidate.data_dir,
                             metadata=candidate.metadata, config=candidate.config,
                             metrics=candidate.metrics, metric=record["metric"],
                             previous=previous)


def parse_args(argv: Sequence[str], *, prog: str = PROG):
    parser = cli.ArgumentParser(prog=prog,
                                description="Publish a trained model if it beats the "
                                            "published one.")
    parser.add_argument("--workdir", required=True, help="s2s-train workdir (local or gs://).")
    parser.add_argument("--data_dir", default="", help="Its s2s-preprocess output, for the "
                                                       "model card's data section.")
    parser.add_argument("--bucket", required=True, help="Destination bucket (name or "
                        "gs://name), or a local directory (a path or file://path).")
    parser.add_argument("--prefix", default="", help="Folder inside the bucket.")
    parser.add_argument("--metric", choices=METRICS, default="bleu",
                        help="Dev metric to compare (ter/wer/per: lower is better).")
    parser.add_argument("--max_attempts", type=int, default=5)
    parser.add_argument("--dev_sha256", default="", help="sha256 of the dev set the run was "
                        "scored on: recorded with the model, and compared before the scores.")
    cli.add_dry_run(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    args = parse_args(argv, prog=prog)
    if args.dry_run:
        candidate = load_candidate(workdir=args.workdir, data_dir=args.data_dir)
        print("\n".join(plan(candidate, root=destination_root(args.bucket), prefix=args.prefix,
                             metric=args.metric, dev_sha256=args.dev_sha256)))
        return
    destination = open_destination(args.bucket)
    candidate = load_candidate(workdir=args.workdir, data_dir=args.data_dir)
    outcome = publish(candidate, bucket=destination, prefix=args.prefix,
                      metric=args.metric, max_attempts=args.max_attempts,
                      dev_sha256=args.dev_sha256)
    published = outcome.published or {"metrics": {"dev": {}}}
    print(json.dumps({"status": outcome.status, args.metric: outcome.score,
                      "published_version": published.get("version"),
                      "published_" + args.metric: published["metrics"]["dev"].get(args.metric)},
                     sort_keys=True))


if __name__ == "__main__":
    cli.run_main(PROG, main)
