"""The one place that turns flags and TF_CONFIG into a tf.distribute strategy.

Multi-worker runs bound every wait on a peer: workers that do not all start within
`start_timeout` seconds, or a peer that stops sending heartbeats for `peer_timeout` seconds
(killed, node lost, network cut), end the job with an error instead of a hang.

A multi-host TPU slice runs ONE client for the whole slice, on worker 0, reaching every
host through `TPUClusterResolver(tpu=NAME)` with TPU_LOAD_LIBRARY=0 (the other hosts run
the slice's TensorFlow servers of a `tpu-vm-tf-*-pod-*` runtime). That client is the
only chief. `--tpu=local` is for single-host slices and is refused on a multi-host one.
"""

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


def configure_peer_timeouts(*, peer_timeout: float, start_timeout: float) -> None:
    """Bounds the waits of TF's coordination service (the MultiWorkerMirroredStrategy
    backbone) on peers: registration at start, heartbeats while running, the exit barrier.

    Must run before the strategy is created, which otherwise configures it with no start
    bound. Uses TensorFlow's internal context API: no public one sets these timeouts.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=int(peer_timeout * 1000),
        cluster_register_timeout_in_ms=int(start_timeout * 1000),
        shutdown_barrier_timeout_in_ms=int(peer_timeout * 1000))


def create(name: str, *, tpu: str = "", peer_timeout: float | None = None,
           start_timeout: float | None = None) -> tf.distribute.Strategy:
    """Builds the strategy; with several logical CPUs and no GPU, mirrored spans the CPUs.

    multi_worker_mirrored needs both timeouts (s2s-train's --peer_timeout, --start_timeout).
    """
    validate(name, tpu=tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker_mirrored":  # before any device query initialises the runtime
        if peer_timeout is None or start_timeout is None:
            raise ValueError("multi_worker_mirrored needs peer_timeout and start_timeout")
        configure_peer_timeouts(peer_timeout=peer_timeout, start_timeout=start_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU") if name != "tpu" else []
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    resolver = tpu_resolver(tpu, hosts=tpu_vm_hosts())
    if tpu not in ("", "local"):
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def tpu_resolver(tpu: str, *, hosts: int, resolver_class=None):
    """The resolver of the slice's one client; refuses the per-host layout on a pod slice."""
    if tpu in ("", "local") and hosts > 1:
        raise ValueError(
            f"--tpu=local on a {hosts}-host TPU slice would start one chief per host, each "
            "training alone on its own chips: run one client, on worker 0 only, with "
            "--tpu=<TPU name> and TPU_LOAD_LIBRARY=0 (python -m launch.cloud.tpu_vm does)")
    if tpu not in ("", "local") and os.environ.get("TPU_LOAD_LIBRARY") != "0" and hosts > 1:
        raise ValueError("a multi-host slice's client must not hold the local chips: set "
                         "TPU_LOAD_LIBRARY=0")
    resolver_class = resolver_class or tf.distribute.cluster_resolver.TPUClusterResolver
    return resolver_class(tpu=tpu or "local")


TPU_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


def tpu_vm_hosts(fetch=None) -> int:
    """Hosts of this TPU VM's slice, from the VM metadata's `worker-network-endpoints`
    (one `hostname:uid:ip` per host); 1 off a TPU VM or when the metadata is unreadable."""
    if fetch is None:
        def fetch(key):
            import urllib.request
            request = urllib.request.Request(TPU_METADATA + key,
                                             headers={"Metadata-Flavor": "Google"})
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.read().decode()
    try:
        endpoints = fetch("worker-network-endpoints")
    except OSError:
        return 1
    return max(1, len([e for e in endpoints.split(",") if e.strip()]))


def worker_info(strategy: tf.distribute.Strategy) -> tuple[int, int, bool]:
    """(worker index, number of workers, is chief) for any strategy."""
    return worker_layout(getattr(strategy, "cluster_resolver", None),
                         single_client=isinstance(strategy, tf.distribute.TPUStrategy))


def worker_layout(resolver, *, single_client: bool) -> tuple[int, int, bool]:
    """(index, workers, is chief) of this process. `single_client`: one process drives the
    whole cluster (TPUStrategy, whose resolver lists the slice's hosts), so it is the chief
    and the only worker that reads data or writes files."""
    if single_client or resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1, True
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    index = task_id + (1 if task_type == "worker" and "chief" in spec else 0)
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                        and "chief" not in spec)
    return index, max(workers, 1), is_chief
