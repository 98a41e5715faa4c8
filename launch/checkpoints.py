"""Where each worker's checkpoints live, and how a run finds the one to resume from.

The chief's checkpoint (model, optimizer, step, its data iterator) is THE checkpoint that
the evaluator and exporter read, in WORKDIR/checkpoints. Every other worker keeps its own
copy in WORKDIR/checkpoints/worker-<i>, because its data iterator reads another shard of
the data and must resume there, not at the chief's position.

A checkpoint cut short (killed mid-save, a broken disk) is skipped with a warning, and the
temporary files of interrupted writes are removed when the next attempt starts.
"""

import os
import re

import tensorflow as tf
from absl import logging

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "ckpt"
# Errors of storage that a retry may not see again: they say nothing about the files.
_TRANSIENT_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                     tf.errors.AbortedError, tf.errors.CancelledError,
                     tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError,
                     tf.errors.UnauthenticatedError)
# What reading a broken checkpoint raises on TF 2.21: NotFoundError (index or data file
# missing), OpError "not an sstable" (garbled index), IndexError "Read less bytes than
# requested" (truncated data), DataLossError (checksum); AssertionError if a variable is absent.
_BROKEN_ERRORS = (tf.errors.OpError, LookupError, AssertionError, ValueError)
# Temporary names: TensorFlow's saver writes ckpt-<step>_temp/ and renames its contents; its
# state file is rewritten through checkpoint.tmp<uuid hex>; write_text_atomically's are below.
_TF_TEMP = re.compile(rf"{CHECKPOINT_NAME}-\d+_temp|checkpoint\.tmp[0-9a-f]{{32}}")
_OWN_TEMP = re.compile(r".+\.tmp-\d+")


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
        max_to_keep=keep, checkpoint_name=CHECKPOINT_NAME)


def step_of(path: str) -> int:
    """The step of a checkpoint prefix `.../ckpt-<step>`."""
    return int(path.rsplit("-", 1)[1])


def listed(checkpoint_manager: tf.train.CheckpointManager) -> list[str]:
    """The checkpoints the state file names, oldest first, ending with its newest.

    The manager's own list leaves out entries without a timestamp (a hand-written or
    copied state file): its `latest_checkpoint` still names the newest one.
    """
    paths = list(checkpoint_manager.checkpoints)
    latest = checkpoint_manager.latest_checkpoint
    if latest and latest not in paths:
        paths.append(latest)
    return paths


def newest_step(checkpoint_manager: tf.train.CheckpointManager) -> int:
    """The newest listed checkpoint's step (readable or not), -1 when none is listed."""
    paths = listed(checkpoint_manager)
    return step_of(paths[-1]) if paths else -1


def restore_newest_readable(checkpoint_manager: tf.train.CheckpointManager,
                            checkpoint: tf.train.Checkpoint, *,
                            at_most: int | None = None) -> tuple[int, list[str]]:
    """Restores the newest listed checkpoint, at or below step `at_most`, that reads whole.

    A checkpoint that cannot be read (truncated, missing a file) is skipped with a warning
    naming it, so that one bad save does not stop every restart. Returns the restored step
    (-1 if none) and a "path: reason" line per skipped checkpoint. Transient storage errors
    propagate: they do not make a checkpoint bad.
    """
    skipped = []
    for path in reversed(listed(checkpoint_manager)):
        if at_most is not None and step_of(path) > at_most:
            continue
        try:
            checkpoint.read(path).assert_existing_objects_matched()
        except _TRANSIENT_ERRORS:
            raise
        except _BROKEN_ERRORS as error:
            skipped.append(f"{path}: {_reason(error)}")
            logging.warning("checkpoint %s cannot be read (%s); trying the one before it",
                            path, _reason(error))
            continue
        logging.info("restored %s", path)
        return step_of(path), skipped
    return -1, skipped


def _reason(error: Exception) -> str:
    """The first line of a read error, without TensorFlow's {{function_node ...}} prefix."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", str(error)).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line[:300]


def remove_stale_temps(workdir: str, *, started: float, worker_index: int,
                       is_chief: bool) -> list[str]:
    """Deletes what killed writes left behind: TensorFlow's checkpoint temporaries and
    write_text_atomically's `*.tmp-<pid>` files. Returns the deleted paths.

    Only those names, and only if last modified before `started` (this attempt's start, a
    time.time() value): nothing written now is touched. Each worker cleans its own
    checkpoint copy; the chief also cleans the rest of the workdir.
    """
    own_dir = directory(workdir, worker_index=worker_index, is_chief=is_chief)
    top = workdir if is_chief else own_dir
    removed = []
    for parent, subdirs, files in tf.io.gfile.walk(top):
        if is_chief and parent.rstrip("/") == own_dir.rstrip("/"):
            subdirs[:] = [d for d in subdirs if not d.startswith("worker-")]
        in_checkpoints = parent.rstrip("/") == own_dir.rstrip("/")
        for name in list(subdirs) + files:
            temp = ((name in files and _OWN_TEMP.fullmatch(name))  # only ever a file
                    or (in_checkpoints and _TF_TEMP.fullmatch(name)))
            path = os.path.join(parent, name)
            if temp and _last_modified(path) < started:
                _delete(path)
                removed.append(path)
                if name in subdirs:
                    subdirs.remove(name)
    for path in removed:
        logging.info("removed %s, left by an interrupted write of an earlier attempt", path)
    return removed


def _last_modified(path: str) -> float:
    """Newest modification time (seconds) of a file or anything in a directory; inf if it
    vanished, so that it is left alone."""
    try:
        if not tf.io.gfile.isdir(path):
            return tf.io.gfile.stat(path).mtime_nsec / 1e9
        times = [tf.io.gfile.stat(os.path.join(parent, name)).mtime_nsec / 1e9
                 for parent, _, files in tf.io.gfile.walk(path) for name in files]
        return max(times, default=tf.io.gfile.stat(path).mtime_nsec / 1e9)
    except tf.errors.NotFoundError:
        return float("inf")


def _delete(path: str) -> None:
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)
