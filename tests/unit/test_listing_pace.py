"""When the lister lists a batch the projector took (`ListingPace`): once the log has gone on
past it, by the events' own times, or once the projector has gone quiet; at once if this
process did not see it taken."""

from datetime import UTC, datetime, timedelta

from jobstream.events import (
    Event,
    JobSubmitted,
    JobTasksAdded,
    SourceItem,
    TaskSpec,
    TaskSucceeded,
    encode,
    subject_for,
)
from jobstream.projections._listing import ListingPace

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def item(seq: int, event: Event) -> SourceItem:
    return SourceItem(seq, subject_for(event), encode(event), event, None)


def submitted(job_id: str, at_s: float) -> JobSubmitted:
    return JobSubmitted(
        job_id=job_id, tasks=[TaskSpec(kind="noop", count=10)], at=T0 + timedelta(seconds=at_s)
    )


def succeeded(job_id: str, at_s: float) -> TaskSucceeded:
    return TaskSucceeded(
        job_id=job_id,
        task_id=f"{job_id}-0",
        kind="noop",
        worker_id="w1",
        attempt=1,
        duration_s=0.1,
        at=T0 + timedelta(seconds=at_s),
    )


def test_a_batch_is_due_once_the_log_has_gone_on_past_it_by_its_own_times() -> None:
    clock = Clock()
    pace = ListingPace(after_s=2.0, quiet_s=0.5, clock=clock)
    assert pace.applied([item(1, submitted("A", 0)), item(2, submitted("B", 1.5))])
    assert not pace.due(1) and not pace.any_due()
    clock.now += 0.4  # busy: another batch applied, but the log is 1.9 s on
    assert not pace.applied([item(3, succeeded("A", 1.9))])
    assert not pace.due(1)
    pace.applied([item(4, succeeded("A", 2.0))])
    assert pace.due(1) and pace.any_due()
    assert not pace.due(2)  # B's batch came 1.5 s later
    pace.listed(1)
    assert not pace.any_due()


def test_a_projector_that_applied_nothing_for_a_while_has_every_batch_listed() -> None:
    clock = Clock()
    pace = ListingPace(after_s=2.0, quiet_s=0.5, clock=clock)
    pace.applied([item(7, submitted("A", 0))])
    assert not pace.due(7)
    assert 0.05 <= pace.wait_s() <= 0.5
    clock.now += 0.5
    assert pace.quiet() and pace.due(7)


def test_a_batch_taken_before_this_process_started_is_due_at_once() -> None:
    pace = ListingPace(after_s=2.0, quiet_s=0.5, clock=Clock())
    pace.applied([item(9, submitted("A", 0))])
    assert pace.due(3)  # not seen taken
    assert not pace.due(9)


def test_streamed_batches_count_and_listed_or_never_taken_ones_are_forgotten() -> None:
    pace = ListingPace(after_s=2.0, quiet_s=0.5, clock=Clock())
    added = JobTasksAdded(job_id="S", batch=0, first_index=0, tasks=[TaskSpec(kind="noop")], at=T0)
    pace.applied([item(4, submitted("A", 0)), item(5, added), item(6, succeeded("A", 0.1))])
    assert pace.newest() == 5
    pace.forget_before(5)  # the lister found seq 5 the first unlisted: 4 was a repeat
    assert pace.newest() == 5 and pace.due(4)
    pace.forget_before(6)
    assert pace.newest() == 0
    assert pace.wait_s() == 1.0  # nothing taken: the lister polls as it idles
