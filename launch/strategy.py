"""The one place that turns flags and TF_CONFIG into a tf.distribute strategy."""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def set_cpu_devices(count: int) -> None:
    """Splits the CPU into `count` logical devices: the CPU proxy for multi-replica runs.

    Must run before TensorFlow initialises its runtime (first op or device query).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def validate(name: str, *, tpu: str = "") -> None:
    """Rejects a bad strategy request before anything is created or written."""
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name!r} is not one of {', '.join(STRATEGIES)}")
    if tpu and name != "tpu":
        raise ValueError(f"--tpu={tpu!r} only applies with --strategy=tpu")
    if name == "multi_worker_mirrored":
        raw = os.environ.get("TF_CONFIG", "")
        if not raw:
            raise ValueError("--strategy=multi_worker_mirrored needs the TF_CONFIG environment "
                             "variable (cluster spec and this task's type and index)")
        try:
            spec = json.loads(raw)
            spec["cluster"], spec["task"]["type"], spec["task"]["index"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"TF_CONFIG is not a valid cluster spec: {error!r}") from error


def create(name: str, *, tpu: str = "") -> tf.distribute.Strategy:
    """Builds the strategy; with several logical CPUs and no GPU, mirrored spans the CPUs."""
    validate(name, tpu=tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker_mirrored":  # before any device query initialises the runtime
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU") if name != "tpu" else []
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
    if tpu not in ("", "local"):
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def worker_info(strategy: tf.distribute.Strategy) -> tuple[int, int, bool]:
    """(worker index, number of workers, is chief) for any strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1, True
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    index = task_id + (1 if task_type == "worker" and "chief" in spec else 0)
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                        and "chief" not in spec)
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return 0, 1, True
    return index, max(workers, 1), is_chief
