"""launch/strategy.py: one chief per job, and the TPU client layout of multi-host slices."""

import pytest
import tensorflow as tf

from launch import strategy
from launch.cloud import tpu_vm

SLICE_ENDPOINTS = ",".join(f"t1v-n-abc-w-{i}:uid{i}:10.0.0.{i + 2}" for i in range(4))


class FakeResolver:
    """What a cluster resolver reports: a cluster spec and this task."""

    def __init__(self, spec: dict, task_type: str = "worker", task_id: int = 0, tpu=None):
        self._spec, self.task_type, self.task_id, self.tpu = spec, task_type, task_id, tpu

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._spec)


def test_multi_worker_jobs_have_exactly_one_chief():
    for spec in ({"worker": ["a:1", "b:1", "c:1"]},
                 {"chief": ["c:1"], "worker": ["a:1", "b:1"]}):
        tasks = [(job, i) for job, hosts in spec.items() for i in range(len(hosts))]
        layouts = [strategy.worker_layout(FakeResolver(spec, job, i), single_client=False)
                   for job, i in tasks]
        assert sorted(index for index, _, _ in layouts) == [0, 1, 2]
        assert {workers for _, workers, _ in layouts} == {3}
        assert [chief for _, _, chief in layouts].count(True) == 1


def test_a_tpu_pod_slice_has_one_client_and_it_is_the_chief():
    """TPUClusterResolver(tpu=NAME) on a 4-host slice lists 4 workers; the one client that
    holds it drives them all, so it is worker 0 of 1 and the chief."""
    resolver = FakeResolver({"worker": [f"10.0.0.{i + 2}:8470" for i in range(4)]})
    assert strategy.worker_layout(resolver, single_client=True) == (0, 1, True)
    # The same resolver read as a multi-worker job would make only host 0 the chief.
    assert strategy.worker_layout(resolver, single_client=False) == (0, 4, True)


def test_the_slice_host_count_comes_from_the_tpu_vm_metadata():
    asked = []

    def fetch(key):
        asked.append(key)
        return SLICE_ENDPOINTS

    assert strategy.tpu_vm_hosts(fetch) == 4
    assert asked == ["worker-network-endpoints"]

    def unreachable(_key):
        raise OSError("no metadata server")

    assert strategy.tpu_vm_hosts(unreachable) == 1


def test_local_is_refused_on_a_multi_host_slice(monkeypatch):
    with pytest.raises(ValueError, match="one client, on worker 0 only, with --tpu=<TPU name> "
                                         "and TPU_LOAD_LIBRARY=0"):
        strategy.tpu_resolver("local", hosts=4, resolver_class=FakeResolver)
    monkeypatch.delenv("TPU_LOAD_LIBRARY", raising=False)
    with pytest.raises(ValueError, match="TPU_LOAD_LIBRARY=0"):
        strategy.tpu_resolver("s2s-tpu", hosts=4, resolver_class=lambda tpu: tpu)


def test_the_pod_client_resolves_the_slice_by_name(monkeypatch):
    monkeypatch.setenv("TPU_LOAD_LIBRARY", "0")
    made = strategy.tpu_resolver("s2s-tpu", hosts=4,
                                 resolver_class=lambda tpu: FakeResolver({}, tpu=tpu))
    assert made.tpu == "s2s-tpu"
    single = strategy.tpu_resolver("local", hosts=1,
                                   resolver_class=lambda tpu: FakeResolver({}, tpu=tpu))
    assert single.tpu == "local"


@pytest.mark.parametrize("accelerator,hosts", [
    ("v5litepod-8", 1), ("v5litepod-16", 4), ("v4-8", 1), ("v4-32", 4), ("v3-32", 4),
    ("v6e-256", 64), ("v5p-16", 2)])
def test_the_launcher_knows_which_slices_are_multi_host(accelerator, hosts):
    assert tpu_vm.slice_hosts(accelerator) == hosts
