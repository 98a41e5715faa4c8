"""Learning-rate schedules and the optimizer the trainer steps."""

import math

import keras
import tensorflow as tf

SCHEDULES = ("inverse_sqrt", "cosine", "linear", "constant")
OPTIMIZERS = ("adam", "adamw")
# Under mixed_float16 gradients are computed on a scaled loss; 2**15 is the usual start.
FLOAT16_INITIAL_SCALE = 2.0 ** 15


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then inverse-sqrt decay, cosine or linear decay to zero, or
    constant."""

    def __init__(self, *, kind: str, peak: float, warmup_steps: int, total_steps: int):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule {kind!r} is not one of {SCHEDULES}")
        self.kind, self.peak = kind, float(peak)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = float(max(self.warmup_steps, 1))
        ramp = tf.minimum(step / warmup, 1.0)
        if self.kind == "inverse_sqrt":
            decay = tf.math.rsqrt(tf.maximum(step, warmup) / warmup)
        elif self.kind == "cosine":
            decay = 0.5 * (1.0 + tf.cos(math.pi * self._decay_progress(step, warmup)))
        elif self.kind == "linear":
            decay = 1.0 - self._decay_progress(step, warmup)
        else:
            decay = 1.0
        return self.peak * ramp * decay

    def _decay_progress(self, step, warmup):
        """0 at the end of warmup, 1 at total_steps (and after)."""
        span = float(max(self.total_steps - self.warmup_steps, 1))
        return tf.clip_by_value((step - warmup) / span, 0.0, 1.0)

    def get_config(self):
        return {"kind": self.kind, "peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


class _FusedAdamUpdate:
    """Adam's update as one ResourceApplyAdam kernel per variable.

    Keras computes it with about ten elementwise ops per variable; on a CPU their dispatch
    and memory passes cost the bench model (about 100 variables) some 25 ms a step. The
    arithmetic is the same: m and v moving averages, bias-corrected step size, epsilon
    added to sqrt(v). AdamW's decoupled weight decay is applied before, by Keras.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]), beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def _handle(variable):
    """The resource handle of a Keras or tf variable (this device's copy under
    tf.distribute, where the update runs inside `strategy.extended.update`)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


class FusedAdam(_FusedAdamUpdate, keras.optimizers.Adam):
    """keras.optimizers.Adam with the fused update."""


class FusedAdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """keras.optimizers.AdamW with the fused update."""


def create_optimizer(config, *, total_steps: int, float16: bool) -> keras.optimizers.Optimizer:
    """Adam/AdamW wrapped to skip non-finite steps: with dynamic loss scaling under float16,
    with a loss scale fixed at 1 otherwise (SkipNonFinite).

    Clipping is NOT configured here: the trainer clips the all-reduced gradient itself,
    because Keras clips before its own cross-replica sum (a per-replica norm).
    """
    schedule = WarmupSchedule(kind=config.schedule, peak=config.learning_rate,
                              warmup_steps=config.warmup_steps, total_steps=total_steps)
    common = dict(learning_rate=schedule, beta_1=config.beta1, beta_2=config.beta2,
                  epsilon=config.epsilon)
    if config.name == "adam":
        inner = FusedAdam(**common)
    elif config.name == "adamw":
        inner = FusedAdamW(weight_decay=config.weight_decay, **common)
    else:
        raise ValueError(f"optimizer {config.name!r} is not one of {OPTIMIZERS}")
    if float16:
        return keras.optimizers.LossScaleOptimizer(inner, initial_scale=FLOAT16_INITIAL_SCALE)
    return SkipNonFinite(inner, initial_scale=1.0)


class SkipNonFinite(keras.optimizers.LossScaleOptimizer):
    """Skips a step whose gradients are not finite; the loss is never scaled.

    float32 and bfloat16 share float32's exponent range, so they need no loss scale. The
    plain LossScaleOptimizer halved its scale on every skipped step and never grew it back:
    after about 90 skips the gradients underflowed to zero without a word. This class keeps
    the parent's variables (and their order) so checkpoints written with it still restore;
    `dynamic_scale` is just carried along, pinned to 1 by `reset_scale`.
    """

    def scale_loss(self, loss):
        return loss

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

    def _stateful_handle_non_finite_grads(self):
        """Nothing to update: the weights, the moments and iterations stay as they were."""

    def reset_scale(self) -> float:
        """Sets the carried scale to 1 (call in cross-replica context); returns the old value,
        which a checkpoint of the halving optimizer may hold."""
        old = float(self.dynamic_scale.numpy())
        if old != 1.0:
            self.dynamic_scale.assign(1.0)
        return old
