import keras
import ml_collections
import numpy as np
import pytest

from launch import optim


def schedule(kind, **overrides):
    settings = dict(kind=kind, peak=1e-3, warmup_steps=100, total_steps=1100)
    settings.update(overrides)
    return optim.WarmupSchedule(**settings)


def lr(sched, step):
    return float(sched(step))


def test_warmup_is_linear_then_each_decay_has_its_shape():
    for kind in optim.SCHEDULES:
        sched = schedule(kind)
        assert lr(sched, 0) == pytest.approx(1e-5)  # step counts from 1
        assert lr(sched, 49) == pytest.approx(5e-4)
        assert lr(sched, 99) == pytest.approx(1e-3)
    assert lr(schedule("inverse_sqrt"), 399) == pytest.approx(1e-3 * np.sqrt(100 / 400))
    assert lr(schedule("constant"), 1099) == pytest.approx(1e-3)
    cosine = schedule("cosine")
    assert lr(cosine, 599) == pytest.approx(5e-4, rel=1e-4)  # halfway through the decay
    assert lr(cosine, 1099) == pytest.approx(0.0, abs=1e-9)


def test_unknown_schedule_and_optimizer_are_rejected():
    with pytest.raises(ValueError, match="schedule"):
        schedule("linear")
    config = ml_collections.ConfigDict(dict(
        name="sgd", schedule="constant", learning_rate=1e-3, warmup_steps=0, beta1=0.9,
        beta2=0.98, epsilon=1e-9, weight_decay=0.0))
    with pytest.raises(ValueError, match="sgd"):
        optim.create_optimizer(config, total_steps=10, float16=False)


@pytest.mark.parametrize("name,float16,scale", [("adam", False, 1.0), ("adamw", True, 2 ** 15)])
def test_optimizer_is_wrapped_for_loss_scaling(name, float16, scale):
    config = ml_collections.ConfigDict(dict(
        name=name, schedule="constant", learning_rate=1e-3, warmup_steps=0, beta1=0.9,
        beta2=0.98, epsilon=1e-9, weight_decay=0.01))
    optimizer = optim.create_optimizer(config, total_steps=10, float16=float16)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    inner = keras.optimizers.AdamW if name == "adamw" else keras.optimizers.Adam
    assert type(optimizer.inner_optimizer) is inner
    assert float(optimizer.scale_loss(1.0)) == scale
