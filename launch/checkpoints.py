"""Where each worker's checkpoints live, and how a run finds the one to resume from.

The chief's checkpoint (model, optimizer, step, its data iterator) is THE checkpoint that
the evaluator and exporter read, in WORKDIR/checkpoints. Every other worker keeps its own
copy in WORKDIR/checkpoints/worker-<i>, because its data iterator reads another shard of
the data and must resume there, not at the chief's position.
"""

import os

import tensorflow as tf
from absl import logging

CHECKPOINT_DIR = "checkpoints"


def write_text_atomically(path: str, text: str) -> None:
    """Readers of a workdir file see the old content or the new, never a partial write."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def variables_by_index(variables) -> dict:
    """A checkpointable {index: tf.Variable} view of Keras 3 variables.

    Keras 3 keeps sub-layers in lists that tf.train.Checkpoint does not follow, so a
    checkpoint of the model object alone silently misses most weights. Listing every
    variable (weights and dropout SeedGenerator states) in construction order does not
    depend on how a model stores its layers; the same model code restores it exactly.
    """
    return {f"{index:05d}": variable.value for index, variable in enumerate(variables)}


def directory(workdir: str, *, worker_index: int = 0, is_chief: bool = True) -> str:
    root = os.path.join(workdir, CHECKPOINT_DIR)
    return root if is_chief else os.path.join(root, f"worker-{worker_index}")


def manager(checkpoint: tf.train.Checkpoint, *, workdir: str, worker_index: int,
            is_chief: bool, keep: int) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(
        checkpoint, directory(workdir, worker_index=worker_index, is_chief=is_chief),
        max_to_keep=keep, checkpoint_name="ckpt")


def restore_latest(checkpoint_manager: tf.train.CheckpointManager,
                   checkpoint: tf.train.Checkpoint) -> str | None:
    """Restores the newest checkpoint, if any; every saved object must find its match."""
    path = checkpoint_manager.latest_checkpoint
    if path is None:
        return None
    checkpoint.read(path).assert_existing_objects_matched()
    logging.info("restored %s", path)
    return path
