"""Teacher-forced scores of a model on a split: the evaluator's xent and token accuracy,
and the trainer's dev loss for early stopping, computed one way."""

import numpy as np
import tensorflow as tf

from launch.progress import Progress
from models import losses
from pipeline import dataset, features


def scorer(model, *, config):
    """A function (split, data_dir) -> scores, traced once for all its calls.

    Scores are the per-token cross-entropy (nats, no smoothing) and accuracy given the
    reference prefix: cheaper than a search and smoother than BLEU; dev xent rising while
    the training loss still falls shows the model has begun to memorize.
    """
    pad_id = config.data.pad_id
    ids = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[ids, ids])
    def sums(inputs, targets):
        logits = model({features.INPUTS: inputs, features.TARGETS: targets}, training=False)
        loss, count = losses.cross_entropy_sums(logits, targets, pad_id=pad_id)
        correct, _ = losses.accuracy_sums(logits, targets, pad_id=pad_id)
        return tf.cast(tf.stack([loss, correct, count]), tf.float64)

    def score(split: str, data_dir: str) -> dict:
        total = np.zeros(3)
        written = dataset.load_metadata(data_dir)["splits"].get(split, {}).get("written", 0)
        progress = Progress(f"teacher-forced {split}:", total=written)
        for batch in dataset.make_eval_dataset(data_dir=data_dir, split=split,
                                               batch_size=config.decode.batch_size):
            total += sums(batch[features.INPUTS], batch[features.TARGETS]).numpy()
            progress.add(int(batch[features.INPUTS].shape[0]))
        progress.finish()
        loss, correct, count = total
        return {"xent": loss / max(count, 1), "token_accuracy": 100.0 * correct / max(count, 1)}

    return score


def split_scores(model, *, config, split: str, data_dir: str) -> dict:
    """One split's scores (see `scorer`)."""
    return scorer(model, config=config)(split, data_dir)
