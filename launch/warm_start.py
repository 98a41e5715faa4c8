"""Warm start: a new run begins from another run's model weights (fine-tuning, retraining).

`config.train.init_from` names a workdir (its newest checkpoint), a checkpoint directory
or prefix, an export (an export root such as WORKDIR/export/best, or one version of it),
or a published model (a publish root with latest.json, or one version). Exports carry a
warm-start bundle beside the SavedModel (BUNDLE/: the exported weights by index, the
run's config.json and its SentencePiece models), which is what is read there.

Only a fresh run warm-starts; once the workdir has a checkpoint, the run resumes from it.
Checkpoints hold variables by index (checkpoints.variables_by_index), so the source must
be the same architecture: every variable is checked by position and shape first, and a
mismatch is one error naming the variables, before any weight changes.

The source's tokenizer must be this run's (same token ids), unless
`config.train.init_vocab_map`: then embedding and output rows move by piece string (what
OpenNMT-tf's update_vocab does) and pieces the source did not have keep their fresh
initialization (launch/vocab_map.py).
"""

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from launch import checkpoints, export_layout, shared_files

BUNDLE = "warm_start"  # in every SavedModel export version
_WEIGHTS = "weights"  # checkpoint prefix inside the bundle
_PUBLISHED_POINTER = "latest.json"  # launch/cloud/publish.py
_KEY = "{group}/{index:05d}/.ATTRIBUTES/VARIABLE_VALUE"
_SHOWN = 5  # mismatching variables named in the error


class WarmStartError(ValueError):
    """The warm-start source cannot seed this model; the one-line message says why."""


@dataclasses.dataclass(frozen=True)
class Source:
    """What init_from points at, located."""
    checkpoint: str  # a checkpoint prefix
    config_path: str  # the source run's config.json ("" when unknown)
    tokenizer_dir: str  # holds source.model and target.model ("" when unknown)


def write_bundle(directory: str, *, model, config, source_model: bytes,
                 target_model: bytes) -> None:
    """The weights, config and tokenizers an export needs to seed another run."""
    tf.io.gfile.makedirs(directory)
    tf.train.Checkpoint(model=checkpoints.variables_by_index(model.variables)).write(
        os.path.join(directory, _WEIGHTS))
    with tf.io.gfile.GFile(os.path.join(directory, "config.json"), "w") as f:
        f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    for side, data in (("source", source_model), ("target", target_model)):
        with tf.io.gfile.GFile(os.path.join(directory, f"{side}.model"), "wb") as f:
            f.write(data)


def locate(source: str) -> Source:
    """The checkpoint (and, where known, config and tokenizers) `source` stands for."""
    source = source.rstrip("/")
    published = os.path.join(source, _PUBLISHED_POINTER)
    if tf.io.gfile.exists(published):
        with tf.io.gfile.GFile(published) as f:
            source = json.load(f)["model_dir"].rstrip("/")
    if tf.io.gfile.exists(os.path.join(source, export_layout.POINTER)) or tf.io.gfile.exists(
            os.path.join(source, export_layout.MANIFEST)):
        return _bundle(_resolve_export(source), given=source)
    if tf.io.gfile.isdir(source):
        for directory in (os.path.join(source, checkpoints.CHECKPOINT_DIR), source):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return _in_workdir(latest)
        raise WarmStartError(f"config.train.init_from={source} holds no checkpoint")
    if tf.io.gfile.exists(source + ".index"):
        return _in_workdir(source)
    raise WarmStartError(f"config.train.init_from={source} is not a workdir, checkpoint, "
                         "export or published model")


def _resolve_export(path: str) -> str:
    try:
        return export_layout.resolve(path, read_text=shared_files.read_text,
                                     exists=tf.io.gfile.exists)
    except export_layout.NotAnExportError as error:
        raise WarmStartError(f"config.train.init_from: {error}") from None


def _bundle(model_dir: str, *, given: str) -> Source:
    bundle = os.path.join(model_dir, BUNDLE)
    if not tf.io.gfile.exists(os.path.join(bundle, _WEIGHTS + ".index")):
        raise WarmStartError(f"config.train.init_from={given}: {model_dir} has no {BUNDLE}/ "
                             "(exported before exports carried one); use its workdir")
    return Source(checkpoint=os.path.join(bundle, _WEIGHTS),
                  config_path=os.path.join(bundle, "config.json"), tokenizer_dir=bundle)


def _in_workdir(path: str) -> Source:
    """A checkpoint in WORKDIR/checkpoints: the config is WORKDIR/config.json."""
    config_path = os.path.join(os.path.dirname(os.path.dirname(path)), "config.json")
    return Source(checkpoint=path,
                  config_path=config_path if tf.io.gfile.exists(config_path) else "",
                  tokenizer_dir="")


def source_tokenizer_sha256(source: Source) -> str | None:
    if not source.config_path:
        return None
    with tf.io.gfile.GFile(source.config_path) as f:
        return json.load(f).get("data", {}).get("tokenizer_sha256")


def check_tokenizer(source: Source, *, tokenizer_sha256: str) -> None:
    """Refuses a source trained with another tokenizer (when its config says which)."""
    source_sha = source_tokenizer_sha256(source)
    if source_sha and source_sha != tokenizer_sha256:
        raise WarmStartError(
            f"config.train.init_from: {source.checkpoint} was trained with tokenizer sha256 "
            f"{source_sha[:12]}... but --data_dir has {tokenizer_sha256[:12]}...: token ids "
            "would not match; preprocess the new data with --tokenizer_model=<its spm.model>,"
            " or set config.train.init_vocab_map=True to move rows by piece")


def _check_shapes(reader, variables, *, group: str, source: str, skip=frozenset()) -> None:
    shapes = reader.get_variable_to_shape_map()
    stored = sum(1 for key in shapes if key.startswith(f"{group}/")
                 and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE"))
    problems = []
    for index, variable in enumerate(variables):
        shape = shapes.get(_KEY.format(group=group, index=index))
        if shape is None:
            problems.append(f"{variable.path} (absent)")
        elif index not in skip and list(shape) != list(variable.shape):
            problems.append(f"{variable.path} {list(shape)} vs {list(variable.shape)}")
    if problems or stored != len(variables):
        shown = ", ".join(problems[:_SHOWN]) + (" ..." if len(problems) > _SHOWN else "")
        raise WarmStartError(
            f"config.train.init_from={source} does not fit this model: {len(problems)} "
            f"mismatching {group} variables ({shown or 'none by position'}), "
            f"{stored} stored vs {len(variables)} here; use the source's model config")


def load(source: str, *, model, optimizer=None, tokenizer_sha256: str,
         vocab_map=None) -> str:
    """Copies the model weights (and the optimizer's state when `optimizer` is given) of
    `source` into this run; returns the checkpoint read.

    `vocab_map(located, model)`, when given, returns {variable index: function(stored
    value, fresh value) -> value} for the vocabulary-sized variables, whose rows it moves
    by piece; the tokenizer check is then skipped.
    """
    located = locate(source)
    moves = {}
    if vocab_map is None:
        check_tokenizer(located, tokenizer_sha256=tokenizer_sha256)
    else:
        try:
            moves = vocab_map(located, model)
        except ValueError as error:
            raise WarmStartError(str(error)) from None
    reader = tf.train.load_checkpoint(located.checkpoint)
    groups = [("model", model.variables)]
    if optimizer is not None:
        groups.append(("optimizer", optimizer.variables))
    _check_shapes(reader, model.variables, group="model", source=source, skip=set(moves))
    if optimizer is not None:
        _check_shapes(reader, optimizer.variables, group="optimizer", source=source)
    values = []  # every value first: an error leaves this run's weights untouched
    for group, variables in groups:
        for index, variable in enumerate(variables):
            stored = reader.get_tensor(_KEY.format(group=group, index=index))
            if group == "model" and index in moves:
                try:
                    stored = moves[index](stored, variable.numpy())
                except ValueError as error:
                    raise WarmStartError(f"config.train.init_from={source}: {variable.path}: "
                                         f"{error}") from None
            values.append((variable, stored))
    for variable, value in values:
        variable.assign(value)
    logging.info("warm start: model weights%s%s from %s",
                 " and optimizer state" if optimizer is not None else "",
                 " (vocabulary rows moved by piece)" if moves else "", located.checkpoint)
    return located.checkpoint
