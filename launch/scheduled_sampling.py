"""How often the decoder reads its own predictions instead of the gold previous tokens
(config.train.scheduled_sampling), as a function of the training step.

Teacher forcing trains on gold prefixes the model never sees when it decodes (exposure
bias). Scheduled sampling (Bengio et al. 2015) replaces a growing fraction of them by the
model's own tokens: the Transformer in two passes (Mihaylova & Liu 2019), the LSTM step by
step (models/). `probability(step)` is that fraction: 0 before `start_step`, then rising
to `max_probability` by the schedule.
"""

import tensorflow as tf

from models import layers

SCHEDULES = ("linear", "exponential", "inverse_sigmoid")


def validate(settings) -> None:
    """ValueError naming the field for a schedule that cannot run."""
    if not settings.schedule:
        return
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"config.train.scheduled_sampling.schedule={settings.schedule!r} is "
                         f"not one of {', '.join(SCHEDULES)} (or '' for off)")
    if settings.mode not in ("argmax", "sample"):
        raise ValueError(f"config.train.scheduled_sampling.mode={settings.mode!r} is not "
                         "argmax or sample")
    if not 0.0 < settings.max_probability <= 1.0:
        raise ValueError("config.train.scheduled_sampling.max_probability must be in (0, 1]")
    if settings.schedule == "linear" and settings.ramp_steps < 1:
        raise ValueError("config.train.scheduled_sampling.ramp_steps must be at least 1")
    if settings.schedule == "exponential" and not 0.0 < settings.k < 1.0:
        raise ValueError("config.train.scheduled_sampling.k must be in (0, 1) for the "
                         "exponential schedule")
    if settings.schedule == "inverse_sigmoid" and settings.k < 1.0:
        raise ValueError("config.train.scheduled_sampling.k must be at least 1 for the "
                         "inverse_sigmoid schedule")


def probability(step, settings):
    """The sampling probability at `step` (a scalar tensor or int): float32 in [0, max].

    With t = step - start: linear max * t / ramp_steps; exponential max * (1 - k ** t);
    inverse_sigmoid max * (1 - (k + 1) / (k + exp(t / k))): Bengio et al.'s
    teacher-forcing decays turned into sampling rates, each 0 at the start step.
    """
    t = tf.maximum(tf.cast(step, tf.float32) - float(settings.start_step), 0.0)
    if settings.schedule == "linear":
        rate = tf.minimum(t / float(settings.ramp_steps), 1.0)
    elif settings.schedule == "exponential":
        rate = 1.0 - tf.pow(float(settings.k), t)
    else:
        k = float(settings.k)
        rate = 1.0 - (k + 1.0) / (k + tf.exp(tf.minimum(t / k, 80.0)))
    return float(settings.max_probability) * tf.clip_by_value(rate, 0.0, 1.0)


def for_step(step, settings, *, seed: int, replica=0) -> layers.Sampling:
    """This step's layers.Sampling: a stateless seed from (seed, step, replica), so a
    resumed run draws what an uninterrupted one would."""
    mixed = (tf.cast(step, tf.int64) * 1024 + tf.cast(replica, tf.int64)) % (2 ** 31 - 1)
    return layers.Sampling(probability=probability(step, settings),
                           seed=tf.stack([tf.constant(seed, tf.int32), tf.cast(mixed, tf.int32)]),
                           sample=settings.mode == "sample")
