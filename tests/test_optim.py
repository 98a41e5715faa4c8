import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

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


def adam_config():
    return ml_collections.ConfigDict(dict(
        name="adam", schedule="constant", learning_rate=1e-2, warmup_steps=0, beta1=0.9,
        beta2=0.98, epsilon=1e-6, weight_decay=0.0))


def built(optimizer, start):
    variables = [keras.Variable(v) for v in start]
    optimizer.build(variables)
    return variables


START = [np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
GRADS = [np.full((2, 3), 0.5, np.float32), np.array([0.1, -0.2, 0.3], np.float32)]
NAN_GRADS = [np.full((2, 3), np.nan, np.float32), np.array([np.inf, 0, 0], np.float32)]


def one_adam_step(start, grads):
    """The weights after one plain keras Adam step from `start`."""
    reference = keras.optimizers.Adam(learning_rate=1e-2, beta_2=0.98, epsilon=1e-6)
    variables = built(reference, start)
    reference.apply([tf.constant(g) for g in grads], variables)
    return [v.numpy() for v in variables]


def test_without_float16_non_finite_steps_are_skipped_and_the_scale_stays_at_1():
    optimizer = optim.create_optimizer(adam_config(), total_steps=1000, float16=False)
    variables = built(optimizer, START)
    apply = tf.function(lambda g: optimizer.apply(g, variables))
    for _ in range(200):  # the halving wrapper reached 2**-200 == 0 here
        apply([tf.constant(g) for g in NAN_GRADS])
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.dynamic_scale.numpy()) == 1.0
    assert float(optimizer.scale_loss(3.0)) == 3.0
    for variable, initial in zip(variables, START):
        np.testing.assert_array_equal(variable.numpy(), initial)
    apply([tf.constant(g) for g in GRADS])
    assert int(optimizer.iterations.numpy()) == 1
    for got, want in zip(variables, one_adam_step(START, GRADS)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_float16_still_halves_its_scale_on_a_non_finite_step():
    optimizer = optim.create_optimizer(adam_config(), total_steps=1000, float16=True)
    variables = built(optimizer, START)
    for _ in range(3):
        optimizer.apply([tf.constant(g) for g in NAN_GRADS], variables)
    assert float(optimizer.scale_loss(1.0)) == optim.FLOAT16_INITIAL_SCALE / 8
    assert int(optimizer.iterations.numpy()) == 0


def test_a_checkpoint_of_the_halving_wrapper_restores_with_the_scale_back_at_1(tmp_path):
    """Checkpoints written before SkipNonFinite hold a LossScaleOptimizer's variables."""
    from launch import checkpoints

    schedule = optim.WarmupSchedule(kind="constant", peak=1e-2, warmup_steps=0,
                                    total_steps=1000)
    old = keras.optimizers.LossScaleOptimizer(  # what create_optimizer returned before
        optim.FusedAdam(learning_rate=schedule, beta_2=0.98, epsilon=1e-6), initial_scale=1.0,
        dynamic_growth_steps=2 ** 30)
    old_variables = built(old, START)
    old.apply([tf.constant(g) for g in GRADS], old_variables)
    for _ in range(5):
        old.apply([tf.constant(g) for g in NAN_GRADS], old_variables)
    assert float(old.dynamic_scale.numpy()) == 2.0 ** -5
    path = tf.train.Checkpoint(
        model=checkpoints.variables_by_index(old_variables),
        optimizer=checkpoints.variables_by_index(old.variables)).write(str(tmp_path / "old"))

    new = optim.create_optimizer(adam_config(), total_steps=1000, float16=False)
    variables = built(new, [np.zeros_like(v) for v in START])
    tf.train.Checkpoint(model=checkpoints.variables_by_index(variables),
                        optimizer=checkpoints.variables_by_index(new.variables)
                        ).read(path).assert_existing_objects_matched()
    assert int(new.iterations.numpy()) == 1
    assert new.reset_scale() == 2.0 ** -5
    assert float(new.dynamic_scale.numpy()) == 1.0
    new.apply([tf.constant(g) for g in GRADS], variables)
    # What the old run should have done next: an unscaled step of its inner Adam.
    old.inner_optimizer.apply([tf.constant(g) for g in GRADS], old_variables)
    for got, want in zip(variables, old_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
