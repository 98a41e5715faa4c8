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
    linear = schedule("linear")
    assert lr(linear, 349) == pytest.approx(7.5e-4, rel=1e-4)  # a quarter through the decay
    assert lr(linear, 599) == pytest.approx(5e-4, rel=1e-4)
    assert lr(linear, 1099) == pytest.approx(0.0, abs=1e-9)


def test_unknown_schedule_and_optimizer_are_rejected():
    with pytest.raises(ValueError, match="schedule"):
        schedule("exponential")
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
    inner = optim.FusedAdamW if name == "adamw" else optim.FusedAdam
    assert type(optimizer.inner_optimizer) is inner
    assert float(optimizer.scale_loss(1.0)) == scale


@pytest.mark.parametrize("fused, reference", [
    (lambda: optim.FusedAdam(learning_rate=1e-2, beta_2=0.98, epsilon=1e-6),
     lambda: keras.optimizers.Adam(learning_rate=1e-2, beta_2=0.98, epsilon=1e-6)),
    (lambda: optim.FusedAdamW(learning_rate=1e-2, weight_decay=0.1),
     lambda: keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.1)),
])
def test_fused_adam_updates_equal_keras(fused, reference):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    grads = [[rng.normal(size=v.shape).astype(np.float32) for v in start] for _ in range(4)]
    results = []
    for make in (fused, reference):
        variables = [keras.Variable(v) for v in start]
        optimizer = make()
        optimizer.build(variables)
        apply = tf.function(lambda g: optimizer.apply(g, variables))
        for step_grads in grads:
            apply([tf.constant(g) for g in step_grads])
        graph = apply.get_concrete_function([tf.constant(g) for g in grads[0]]).graph
        kernels = [op.type for op in graph.get_operations()]
        assert kernels.count("ResourceApplyAdam") == (2 if make is fused else 0)
        results.append([v.numpy() for v in variables])
        assert int(optimizer.iterations.numpy()) == 4
    for got, want, initial in zip(*results, start):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, initial)
