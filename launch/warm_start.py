"""Warm start: a new run begins from another run's model weights (fine-tuning, retraining).

Only a fresh run warm-starts; once the workdir has a checkpoint, the run resumes from it.
Checkpoints hold variables by index (checkpoints.variables_by_index), so the source must
be the same architecture: every variable is checked by position and shape first, and a
mismatch is one error naming the variables, before any weight changes. The source's
tokenizer must be this run's (same token ids); mapping another vocabulary is not done.
"""

import json
import os

import tensorflow as tf
from absl import logging

from launch import checkpoints

_KEY = "{group}/{index:05d}/.ATTRIBUTES/VARIABLE_VALUE"
_SHOWN = 5  # mismatching variables named in the error


class WarmStartError(ValueError):
    """The warm-start source cannot seed this model; the one-line message says why."""


def checkpoint_path(source: str) -> str:
    """The checkpoint `source` names: a workdir (its newest checkpoint), a checkpoint
    directory, or a checkpoint prefix such as WORKDIR/checkpoints/ckpt-5000."""
    if tf.io.gfile.isdir(source):
        for directory in (os.path.join(source, checkpoints.CHECKPOINT_DIR), source):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
        raise WarmStartError(f"config.train.init_from={source} holds no checkpoint")
    if tf.io.gfile.exists(source + ".index"):
        return source
    raise WarmStartError(f"config.train.init_from={source} is not a workdir, checkpoint "
                         "directory or checkpoint prefix")


def check_tokenizer(path: str, *, tokenizer_sha256: str) -> None:
    """Refuses a source workdir whose config.json names another tokenizer (when it has one)."""
    workdir = os.path.dirname(os.path.dirname(path))
    config_path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(config_path):
        return
    with tf.io.gfile.GFile(config_path) as f:
        source_sha = json.load(f).get("data", {}).get("tokenizer_sha256")
    if source_sha and source_sha != tokenizer_sha256:
        raise WarmStartError(
            f"config.train.init_from: {workdir} was trained with tokenizer sha256 "
            f"{source_sha[:12]}... but --data_dir has {tokenizer_sha256[:12]}...: token ids "
            "would not match; preprocess the new data with --tokenizer_model=<its spm.model>")


def _check_shapes(reader, variables, *, group: str, source: str) -> None:
    shapes = reader.get_variable_to_shape_map()
    stored = sum(1 for key in shapes if key.startswith(f"{group}/")
                 and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE"))
    problems = []
    for index, variable in enumerate(variables):
        shape = shapes.get(_KEY.format(group=group, index=index))
        if shape is None:
            problems.append(f"{variable.path} (absent)")
        elif list(shape) != list(variable.shape):
            problems.append(f"{variable.path} {list(shape)} vs {list(variable.shape)}")
    if problems or stored != len(variables):
        shown = ", ".join(problems[:_SHOWN]) + (" ..." if len(problems) > _SHOWN else "")
        raise WarmStartError(
            f"config.train.init_from={source} does not fit this model: {len(problems)} "
            f"mismatching {group} variables ({shown or 'none by position'}), "
            f"{stored} stored vs {len(variables)} here; use the source's model config")


def load(source: str, *, model, optimizer=None, tokenizer_sha256: str) -> str:
    """Copies the model weights (and the optimizer's state when `optimizer` is given) of
    `source` into this run; returns the checkpoint read."""
    path = checkpoint_path(source)
    check_tokenizer(path, tokenizer_sha256=tokenizer_sha256)
    reader = tf.train.load_checkpoint(path)
    groups = [("model", model.variables)]
    if optimizer is not None:
        groups.append(("optimizer", optimizer.variables))
    for group, variables in groups:
        _check_shapes(reader, variables, group=group, source=source)
    for group, variables in groups:
        for index, variable in enumerate(variables):
            variable.assign(reader.get_tensor(_KEY.format(group=group, index=index)))
    logging.info("warm start: model weights%s from %s",
                 " and optimizer state" if optimizer is not None else "", path)
    return path
