"""What KEDA's nats-jetstream scaler reads, from a real nats-server with jobstream's account
(infra/nats/accounts.conf): the monitoring URL it forms from
infra/k8s/worker-scaledobject.yaml (`/jsz?acc=<account>&consumers=true&config=true`) lists
the stream and every consumer the triggers name once `jobstream init` has run, and a
consumer's lag (pending + unacknowledged, as the scaler adds them) counts the queued tasks,
whether waiting or in a worker's hands."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobstream.events import (
    Bus,
    NatsSecurity,
    PriorityLevel,
    ensure_streams,
    ensure_worker_consumer,
    task_queue_subject,
    worker_consumer_name,
)
from jobstream.services.stack import NatsServer, free_port
from tests.infra._schemas import K8S_DIR, REPO_ROOT, load_yaml_documents

ACCOUNTS = REPO_ROOT / "infra" / "nats" / "accounts.conf"

QUEUED = 7
TAKEN = 2


@pytest.fixture
def monitored_nats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[NatsServer, int]]:
    """A nats-server with the users of infra/nats/accounts.conf, as nats/values.yaml loads
    them, and its monitoring port."""
    accounts = ACCOUNTS.read_text("utf-8")
    for variable in re.findall(r"password: \$(\w+)", accounts):
        monkeypatch.setenv(variable, f"secret-{variable}")
    http_port = free_port()
    extra = f"{accounts}\nhttp: 127.0.0.1:{http_port}\n"
    server = NatsServer(tmp_path / "nats", extra_config=extra).start()
    yield server, http_port
    server.stop()


def scaler_triggers() -> list[dict[str, str]]:
    [scaled] = load_yaml_documents(K8S_DIR / "worker-scaledobject.yaml")
    return [trigger["metadata"] for trigger in scaled["spec"]["triggers"]]


def consumers_seen(jsz: dict[str, Any], account: str, stream: str) -> dict[str, dict[str, Any]]:
    """The consumers of `stream` in `account`, as the scaler walks the answer."""
    for details in jsz.get("account_details", []):
        if details["name"] != account:
            continue
        for stream_detail in details.get("stream_detail", []):
            if stream_detail["name"] == stream:
                return {c["name"]: c for c in stream_detail.get("consumer_detail", [])}
    return {}


async def test_the_scaler_finds_every_consumer_and_counts_the_backlog(
    monitored_nats: tuple[NatsServer, int],
) -> None:
    server, http_port = monitored_nats
    triggers = scaler_triggers()
    [account] = {t["account"] for t in triggers}
    [stream] = {t["stream"] for t in triggers}
    queue = "default"
    admin = NatsSecurity(user="admin", password="secret-JOBSTREAM_ADMIN_PASSWORD")
    bus = await Bus.connect([server.url], name="keda-lag-test", security=admin)
    try:
        await ensure_streams(bus.js)
        await ensure_worker_consumer(bus.js, queue, lease_s=30.0)
        for number in range(QUEUED):
            subject = task_queue_subject(queue, f"JOB{number}", level=PriorityLevel.NORMAL)
            await bus.js.publish(subject, b"{}")
        normal = worker_consumer_name(queue, PriorityLevel.NORMAL)
        subscription = await bus.js.pull_subscribe_bind(normal, stream)
        taken = await subscription.fetch(TAKEN, timeout=5)
        assert len(taken) == TAKEN  # in a worker's hands, not acknowledged
        # The URL the scaler builds (getNATSJetStreamMonitoringURL) on the endpoint given.
        url = f"http://127.0.0.1:{http_port}/jsz"
        params = {"acc": account, "consumers": "true", "config": "true"}
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(url, params=params)
        answer.raise_for_status()
        seen = consumers_seen(answer.json(), account, stream)
    finally:
        await bus.close()
    assert {t["consumer"] for t in triggers} <= seen.keys()
    lag = {name: c["num_pending"] + c["num_ack_pending"] for name, c in seen.items()}
    assert lag[normal] == QUEUED
    assert seen[normal]["num_ack_pending"] == TAKEN
    assert all(lag[t["consumer"]] == 0 for t in triggers if t["consumer"] != normal)
