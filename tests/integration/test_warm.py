"""`http.warm` end to end: real nats-server, real worker processes, web sites on 127.0.0.1 (one
"domain" per port) that count the requests they get."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobstream.bench._sites import Reply, Request, Site, rate_per_s, serving
from jobstream.events import (
    Bus,
    TaskDeadLettered,
    TaskFailed,
    TaskMessage,
    TaskSucceeded,
    new_id,
    task_id_for,
)
from jobstream.services.stack import NatsServer
from jobstream.services.worker.warm._handler import MAX_SLOW_DOWN_DEFERRALS
from tests.faults._harness import (
    Processes,
    events_of,
    read_log,
    terminal_events,
    wait_for,
    wait_for_worker_started,
)

# Short backoffs keep the retry tests to seconds.
FAST_RETRIES = ("--retry-base-s", "0.05", "--retry-cap-s", "0.2")


async def queue_warm_tasks(
    bus: Bus, tasks: Sequence[dict[str, Any]], *, max_attempts: int = 5
) -> tuple[str, list[str]]:
    """Queue one `http.warm` task per args, as the dispatcher would; the job and task ids."""
    job_id = new_id()
    ids = []
    for index, args in enumerate(tasks):
        task_id = task_id_for(job_id, index)
        message = TaskMessage(
            job_id=job_id,
            task_id=task_id,
            kind="http.warm",
            args=dict(args),
            max_attempts=max_attempts,
        )
        await bus.publish_task("default", message, msg_id=task_id)
        ids.append(task_id)
    return job_id, ids


async def wait_for_ends(bus: Bus, task_ids: list[str], *, timeout_s: float) -> dict[str, Any]:
    """Every task's one terminal event, by task id."""

    async def ended() -> dict[str, Any] | None:
        ends = terminal_events(await read_log(bus))
        if all(task in ends for task in task_ids):
            return {task: ends[task] for task in task_ids}
        return None

    found: dict[str, Any] = await wait_for(ended, timeout_s=timeout_s, what="every page's end")
    assert all(len(ends) == 1 for ends in found.values())
    return {task: ends[0] for task, ends in found.items()}


def start_workers(
    processes: Processes, nats_url: str, tmp_path: Path, count: int, *extra: str
) -> list[str]:
    """Workers as a crawl would run them: many pages in hand at once, since a page waiting
    for its domain's turn (up to a second) holds one of the worker's slots."""
    names = [f"warm-{index}" for index in range(count)]
    for name in names:
        processes.worker(name, nats_url, data_dir=tmp_path, lease_s=10, concurrency=32, extra=extra)
    return names


def results(ends: dict[str, Any]) -> list[dict[str, Any]]:
    assert all(isinstance(end, TaskSucceeded) for end in ends.values()), ends
    return [end.result for end in ends.values()]


def slow(seconds: float) -> Callable[[Request], Reply]:
    return lambda request: Reply(delay_s=seconds)


async def test_rate_and_concurrency_hold_across_two_workers(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Each domain's rate is the fleet's, within 10%, and its slots are never exceeded."""
    paced = (Site(slow(0.01)), Site(slow(0.01)))
    crowded = Site(slow(0.3))
    async with serving(*paced, crowded):
        tasks = [
            {"url": site.url(f"/p{i}"), "rate": 8.0, "concurrency": 2, "warm": False}
            for i in range(32)
            for site in paced
        ]
        tasks += [
            {"url": crowded.url(f"/c{i}"), "rate": 100.0, "concurrency": 2, "warm": False}
            for i in range(20)
        ]
        with Processes(tmp_path / "logs") as processes:
            workers = start_workers(processes, nats_server.url, tmp_path, 2)
            await wait_for_worker_started(bus, *workers)
            _, ids = await queue_warm_tasks(bus, tasks)
            ends = await wait_for_ends(bus, ids, timeout_s=40)
    pages = results(ends)
    assert {page["status"] for page in pages} == {200}
    for site in paced:
        rate = rate_per_s(site.times())
        print(f"{site.domain}: {len(site.requests)} requests at {rate:.2f}/s (asked 8/s)")
        assert len(site.requests) == 32
        assert 8.0 * 0.9 <= rate <= 8.0 * 1.1
    print(f"crowded domain: at most {crowded.max_in_flight} in flight (asked 2)")
    assert len(crowded.requests) == 20
    assert crowded.max_in_flight == 2
    # Both workers took part: the limits held across processes, not within one.
    assert len({end.worker_id for end in ends.values()}) == 2


async def test_a_429_blocks_its_domain_for_retry_after_then_slows_it(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    def once_429(request: Request) -> Reply:
        """429 to the site's sixth request (its rate known by then), then 200 to all."""
        if len(limited.requests) == 6:
            return Reply(status=429, headers={"retry-after": "2"})
        return Reply()

    limited, other = Site(once_429), Site()
    async with serving(limited, other):
        tasks = [
            {"url": site.url(f"/p{i}"), "rate": 5.0, "concurrency": 1, "warm": False}
            for i in range(30)
            for site in (limited, other)
        ]
        with Processes(tmp_path / "logs") as processes:
            workers = start_workers(processes, nats_server.url, tmp_path, 2)
            await wait_for_worker_started(bus, *workers)
            _, ids = await queue_warm_tasks(bus, tasks)
            ends = await wait_for_ends(bus, ids, timeout_s=40)
        log = list(events_of(await read_log(bus)))
    assert len(results(ends)) == 60
    failed = [e.error for e in log if isinstance(e, TaskFailed)]
    assert not failed, "a 429 is not a failed attempt"
    refused_at = limited.requests[5].at
    after = [t - refused_at for t in limited.times() if t > refused_at]
    print(f"after the 429: next request {after[0]:.2f}s later")
    assert after[0] >= 2.0 - 0.05
    before_rate = rate_per_s([t for t in limited.times() if t <= refused_at])
    slowed_rate = rate_per_s([t for t in limited.times() if refused_at + 2 <= t < refused_at + 4])
    print(f"rate before {before_rate:.2f}/s, in the 2 s after the block {slowed_rate:.2f}/s")
    assert slowed_rate < 5.0 * 0.75  # halved, then a step back up with each success
    # The other domain went on while the limited one was blocked.
    during = [t for t in other.times() if refused_at + 0.2 < t < refused_at + 1.8]
    assert len(during) >= 5, [round(t - refused_at, 2) for t in other.times()]


async def test_outcomes_retries_broken_links_and_bad_arguments(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    def answer(request: Request) -> Reply:
        if request.path.startswith("/flaky") and request.seen < 2:
            return Reply(status=500)
        if request.path == "/down":
            return Reply(status=500)
        if request.path == "/missing":
            return Reply(status=404)
        if request.path == "/moved":
            return Reply(status=301, headers={"location": "/final"})
        return Reply()

    site = Site(answer)
    async with serving(site):
        fast = {"rate": 100.0, "concurrency": 4, "warm": False}
        tasks: list[dict[str, Any]] = [{"url": site.url(f"/flaky{i}"), **fast} for i in range(3)]
        tasks += [
            {"url": site.url("/missing"), **fast},
            {"url": site.url("/moved"), **fast},
            {"url": site.url("/down"), **fast},
            {"url": "ftp://127.0.0.1/file"},
            {"url": "http://127.0.0.1/" + "a" * 10_000},
            {"url": site.url("/x"), "rate": "fast"},
            {"url": site.url("/x"), "concurrency": [2]},
            {"url": site.url("/x"), "headers": {"x": 1}},
            {"url": 12},
        ]
        with Processes(tmp_path / "logs") as processes:
            workers = start_workers(processes, nats_server.url, tmp_path, 1, *FAST_RETRIES)
            await wait_for_worker_started(bus, *workers)
            _, ids = await queue_warm_tasks(bus, tasks, max_attempts=4)
            ends = await wait_for_ends(bus, ids, timeout_s=30)
            processes.assert_running()
    by_index = [ends[task] for task in ids]
    for flaky in by_index[:3]:
        assert isinstance(flaky, TaskSucceeded)
        assert flaky.attempt == 3
        assert flaky.result["status"] == 200
    missing, moved, down = by_index[3:6]
    assert isinstance(missing, TaskSucceeded)
    assert (missing.attempt, missing.result["status"]) == (1, 404)
    assert len([r for r in site.requests if r.path == "/missing"]) == 1
    assert isinstance(moved, TaskSucceeded)
    assert moved.result["redirects"] == [{"url": site.url("/moved"), "status": 301}]
    assert moved.result["final_url"] == site.url("/final")
    assert isinstance(down, TaskDeadLettered)
    assert down.attempts == 4
    assert down.last_error == f"HTTP 500 Internal Server Error for {site.url('/down')}"
    expected = [
        "is not http or https",
        "over 2048",
        "at `$.rate`",
        "at `$.concurrency`",
        "at `$.headers[...]`",
        "at `$.url`",
    ]
    for bad, message in zip(by_index[6:], expected, strict=True):
        assert isinstance(bad, TaskDeadLettered)
        assert bad.reason == "permanent error"
        assert bad.attempts == 1
        assert "http.warm" in bad.last_error
        assert message in bad.last_error


MISS_THEN_HIT = {
    "cloudflare": ({"cf-cache-status": "MISS"}, {"cf-cache-status": "HIT"}, "MISS"),
    "cloudflare-expired": ({"cf-cache-status": "EXPIRED"}, {"cf-cache-status": "HIT"}, "EXPIRED"),
    "cloudfront": ({"x-cache": "Miss from cloudfront"}, {"x-cache": "Hit from cloudfront"}, "MISS"),
    "fastly": ({"x-cache": "MISS, MISS"}, {"x-cache": "MISS, HIT"}, "MISS"),
    "akamai": (
        {"x-cache-remote": "TCP_MISS from a1"},
        {"x-cache-remote": "TCP_HIT from a1"},
        "MISS",
    ),
    "vercel": ({"x-vercel-cache": "MISS"}, {"x-vercel-cache": "HIT"}, "MISS"),
    "rfc9211": ({"cache-status": "CDN; fwd=uri-miss"}, {"cache-status": "CDN; hit"}, "MISS"),
    "varnish": ({"x-varnish": "101"}, {"x-varnish": "102 101"}, "MISS"),
    "age": ({"age": "0"}, {"age": "3"}, "MISS"),
}
MISS_DELAY_S = 0.2


async def test_a_miss_is_warmed_until_hit_with_each_cdns_headers(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    def cdn(request: Request) -> Reply:
        miss, hit, _ = MISS_THEN_HIT[request.path.strip("/")]
        if request.seen == 0:
            return Reply(headers=miss, delay_s=MISS_DELAY_S)
        return Reply(headers=hit)

    site = Site(cdn)
    async with serving(site):
        tasks = [
            {"url": site.url(f"/{name}"), "rate": 50.0, "concurrency": 4} for name in MISS_THEN_HIT
        ]
        with Processes(tmp_path / "logs") as processes:
            workers = start_workers(processes, nats_server.url, tmp_path, 1)
            await wait_for_worker_started(bus, *workers)
            _, ids = await queue_warm_tasks(bus, tasks)
            ends = await wait_for_ends(bus, ids, timeout_s=30)
    for (name, (_, _, first)), page in zip(MISS_THEN_HIT.items(), results(ends), strict=True):
        assert page["cache"] == first, name
        assert page["cache_header"] is not None
        assert page["warm"] is not None, name
        assert page["warm"]["checks"] == 1, name
        assert page["warm"]["cache"] == "HIT", name
        assert page["warm"]["status"] == 200
        assert page["time_saved_ms"] > MISS_DELAY_S * 1000 * 0.5, name
        assert page["timings_ms"]["total"] >= MISS_DELAY_S * 1000
        assert page["timings_ms"]["ttfb"] is not None
        assert page["bytes"] == len(b"<html>ok</html>")
        assert page["content_type"] == "text/html"
    methods = [r.method for r in site.requests if r.path == "/cloudflare"]
    assert methods == ["GET", "HEAD", "GET"]


async def test_a_killed_workers_slot_frees_itself_after_its_lease(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A worker SIGKILLed in the middle of a request never gives its slot back: the slot's
    lease (the request's timeout and a margin) frees it, and the domain goes on."""

    def answer(request: Request) -> Reply:
        return Reply(delay_s=30.0 if request.path == "/hang" else 0.0)

    site = Site(answer)
    limits = {"rate": 20.0, "concurrency": 1, "warm": False, "timeout_s": 2.0}
    async with serving(site):
        with Processes(tmp_path / "logs") as processes:
            doomed = processes.worker("doomed", nats_server.url, data_dir=tmp_path, lease_s=30)
            await wait_for_worker_started(bus, "doomed")
            await queue_warm_tasks(bus, [{"url": site.url("/hang"), **limits}], max_attempts=1)

            async def hanging() -> bool:
                return bool(site.requests)

            await wait_for(hanging, timeout_s=15, what="the hanging request")
            claimed_at = site.requests[0].at
            doomed.kill()
            start_workers(processes, nats_server.url, tmp_path, 1)
            await wait_for_worker_started(bus, "warm-0")
            _, ids = await queue_warm_tasks(
                bus, [{"url": site.url(f"/p{i}"), **limits} for i in range(3)]
            )
            ends = await wait_for_ends(bus, ids, timeout_s=30)
    assert len(results(ends)) == 3
    first_after = min(site.times("/p")) - claimed_at
    print(f"the killed worker's slot was free again {first_after:.2f}s after its request")
    # Its lease: the 2 s timeout and a 1 s margin (from the claim, just before the request).
    assert 2.5 <= first_after <= 8.0


async def test_a_site_that_always_answers_503_ends_in_a_dead_letter(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A 503 slows the domain and defers the page, a few times; then it counts as a failed
    attempt, and after the last the page is dead-lettered with the status as its error."""
    site = Site(lambda request: Reply(status=503, headers={"retry-after": "0"}))
    async with serving(site):
        page = {"url": site.url("/down"), "rate": 50.0, "concurrency": 1, "warm": False}
        with Processes(tmp_path / "logs") as processes:
            workers = start_workers(processes, nats_server.url, tmp_path, 1, *FAST_RETRIES)
            await wait_for_worker_started(bus, *workers)
            _, ids = await queue_warm_tasks(bus, [page], max_attempts=2)
            ends = await wait_for_ends(bus, ids, timeout_s=40)
        log = list(events_of(await read_log(bus)))
    dead = ends[ids[0]]
    assert isinstance(dead, TaskDeadLettered)
    assert dead.attempts == 2
    assert dead.last_error == f"HTTP 503 Service Unavailable for {site.url('/down')}"
    failed = [e for e in log if isinstance(e, TaskFailed)]
    assert [f.attempt for f in failed] == [1, 2]
    # Put back until the page has been deferred MAX_SLOW_DOWN_DEFERRALS times (some of them
    # for its turn, as the domain slowed down), then one request per attempt.
    assert 3 <= len(site.requests) <= MAX_SLOW_DOWN_DEFERRALS + 2
