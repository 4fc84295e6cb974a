"""Operations on one job through the log: cancel."""

from jobstream.events import (
    Bus,
    ConflictError,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobstreamError,
    NameKind,
    check_name,
    event_type,
    job_subject,
)


async def cancel_job(bus: Bus, job_id: str, *, reason: str = "") -> None:
    """Append `job.cancelled`, fenced on the job's last event so that it cannot land after
    the job has ended (the dispatcher's ending is fenced on the same sequence)."""
    try:
        subject = job_subject(check_name(job_id, NameKind.JOB_ID))
    except ValueError as exc:
        raise JobstreamError(str(exc)) from None
    last = await bus.last_on_subject(subject)
    if last is None:
        raise JobstreamError(f"job {job_id} not found in the log")
    seq, event = last
    if isinstance(event, JobCompleted | JobFailed | JobCancelled):
        raise JobstreamError(f"job {job_id} has already ended ({event_type(event)})")
    try:
        await bus.publish_event(
            JobCancelled(job_id=job_id, reason=reason), expected_last_subject_seq=seq
        )
    except ConflictError:
        raise JobstreamError(f"job {job_id} changed while cancelling; look at it again") from None
