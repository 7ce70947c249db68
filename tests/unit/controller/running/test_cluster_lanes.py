"""A status write is sent while every pod-create thread waits on the API server."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from paraserve.controller.api_writes import LaneBusy, Urgency
from paraserve.controller.running.cluster_io import Cluster


class SlowPodsApi:
    """An API client whose pod creates hang until released; every other call answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.creates_waiting = 0
        self._lock = threading.Lock()

    def param_serialize(self, *, method: str, resource_path: str, body: Any, **_: Any) -> Any:
        return method, resource_path, {}, body, None

    def call_api(self, method: str, url: str, **_: Any) -> Any:
        if method == "POST" and url.endswith("/pods"):
            with self._lock:
                self.creates_waiting += 1
            self.release.wait(timeout=30)
            return _Answer(201, {"kind": "Pod"})
        return _Answer(200, {"kind": "InferenceDeployment"})


class _Answer:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self._body = json.dumps(body).encode()

    def read(self) -> bytes:
        return self._body


def _pod(index: int) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": f"d-0-{index}", "namespace": "ns"}}


def test_a_status_write_does_not_wait_behind_pod_creates() -> None:
    api = SlowPodsApi()
    cluster = Cluster(api, workers=2, pod_workers=4, deployment_workers=1)

    async def scenario() -> tuple[int, bool]:
        creating = asyncio.ensure_future(cluster.create_all([_pod(i) for i in range(12)]))
        while api.creates_waiting < 4:  # every pod thread is taken, 8 more creates queued
            await asyncio.sleep(0.01)
        written = await asyncio.wait_for(
            cluster.patch_deployment("ns", "d", {"status": {}}, resource_version="1"), timeout=5
        )
        waiting = api.creates_waiting
        api.release.set()
        created = await creating
        return waiting, written is not None and all(created)

    try:
        waiting, done = asyncio.run(scenario())
    finally:
        api.release.set()
        cluster.close()
    assert waiting == 4  # the write went while the creates were still held
    assert done


def test_one_pool_when_no_pod_lane_is_asked_for() -> None:
    api = SlowPodsApi()
    cluster = Cluster(api, workers=2)

    async def scenario() -> bool:
        creating = asyncio.ensure_future(cluster.create_all([_pod(i) for i in range(4)]))
        while api.creates_waiting < 2:
            await asyncio.sleep(0.01)
        patch = cluster.patch_deployment("ns", "d", {}, resource_version="1")
        try:
            await asyncio.wait_for(asyncio.shield(patch), timeout=0.3)
            return False
        except TimeoutError:
            return True  # it waits for a thread, as every call did before the lanes
        finally:
            api.release.set()
            await creating

    try:
        assert asyncio.run(scenario())
    finally:
        api.release.set()
        cluster.close()


class HeldPatchesApi:
    """Deployment patches wait until released, and the order they reach the server is kept."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def param_serialize(self, *, method: str, resource_path: str, body: Any, **_: Any) -> Any:
        return method, resource_path, {}, body, None

    def call_api(self, method: str, url: str, body: Any = None, **_: Any) -> Any:
        with self._lock:
            self.sent.append(url.rsplit("/", 2)[-2] if url.endswith("/status") else url)
        self.release.wait(timeout=30)
        return _Answer(200, {"kind": "InferenceDeployment"})


def _write(cluster: Cluster, name: str, urgency: Urgency) -> Any:
    return cluster.patch_deployment(
        "ns", name, {"status": {}}, resource_version="1", subresource="status", urgency=urgency
    )


def test_a_deployment_turning_ready_is_sent_before_the_writes_queued_ahead_of_it() -> None:
    api = HeldPatchesApi()
    cluster = Cluster(api, workers=2, pod_workers=2, deployment_workers=1)

    async def scenario() -> None:
        in_flight = asyncio.ensure_future(_write(cluster, "in-flight", Urgency.PROGRESS))
        while not api.sent:  # the lane's one thread is taken
            await asyncio.sleep(0.01)
        queued = []
        for name, urgency in (
            ("gang-1", Urgency.GANG),
            ("scheduling", Urgency.PHASE),
            ("gang-2", Urgency.GANG),
            ("turned-ready", Urgency.SETTLED),
        ):
            queued.append(asyncio.ensure_future(_write(cluster, name, urgency)))
            await asyncio.sleep(0.01)
        api.release.set()
        await asyncio.gather(in_flight, *queued)

    try:
        asyncio.run(scenario())
    finally:
        api.release.set()
        cluster.close()
    assert api.sent == ["in-flight", "turned-ready", "scheduling", "gang-1", "gang-2"]


def test_a_progress_write_is_not_queued_behind_others_and_a_phase_write_is() -> None:
    api = HeldPatchesApi()
    cluster = Cluster(api, workers=2, pod_workers=2, deployment_workers=1)

    async def scenario() -> bool:
        in_flight = asyncio.ensure_future(_write(cluster, "in-flight", Urgency.PHASE))
        while not api.sent:
            await asyncio.sleep(0.01)
        with pytest.raises(LaneBusy):
            await _write(cluster, "counting", Urgency.PROGRESS)  # refused at once, never sent
        queued = asyncio.ensure_future(_write(cluster, "running", Urgency.PHASE))
        await asyncio.sleep(0.05)
        waiting = not queued.done()
        api.release.set()
        await asyncio.gather(in_flight, queued)
        # With the lane free again, a progress write is sent.
        return waiting and await _write(cluster, "counting-now", Urgency.PROGRESS) is not None

    try:
        assert asyncio.run(scenario())
    finally:
        api.release.set()
        cluster.close()
    assert api.sent == ["in-flight", "running", "counting-now"]
