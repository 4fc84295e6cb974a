"""Writing and recovering the NDJSON results files, without a server."""

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobstream.events import (
    ChunkFailure,
    ChunkResult,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    SourceItem,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    decode_item,
    encode,
)
from jobstream.projections import (
    ResultLine,
    last_written_seq,
    partition_path,
    repair_partitions,
    result_line,
)
from jobstream.projections._ndjson import READ_CHUNK, PartitionWriter, result_lines

DAY = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def line(
    seq: int,
    at: datetime = DAY,
    output: object = None,
    *,
    part: int | None = None,
    parts: int | None = None,
) -> ResultLine:
    return ResultLine(
        seq=seq,
        at=at,
        job_id="J",
        task_id=f"J-{seq}" if part is None else f"J-{seq}-{part}",
        kind="sum",
        status="succeeded",
        inputs={"a": seq, "b": 1},
        output={"sum": seq + 1} if output is None else output,
        worker_id="w",
        attempts=1,
        duration_s=0.1,
        error=None,
        part=part,
        parts=parts,
    )


def chunk(seq: int, parts: int, at: datetime = DAY) -> list[ResultLine]:
    """The lines of one event that makes `parts` of them."""
    return [line(seq, at, part=part, parts=parts) for part in range(1, parts + 1)]


def write(results_dir: Path, *lines: ResultLine) -> None:
    writer = PartitionWriter(results_dir)
    try:
        writer.write(lines)
    finally:
        writer.close()


def seqs(path: Path) -> list[int]:
    return [json.loads(text)["seq"] for text in path.read_text().splitlines()]


def test_no_files_means_nothing_written(tmp_path: Path) -> None:
    assert last_written_seq(tmp_path) == 0
    assert last_written_seq(tmp_path / "missing") == 0
    assert repair_partitions(tmp_path) == 0


def test_the_checkpoint_is_the_highest_seq_of_all_files(tmp_path: Path) -> None:
    # A late event (an older day) can come after newer ones in the log.
    write(tmp_path, line(3), line(5, DAY + timedelta(days=1)), line(8), line(9, DAY))
    assert seqs(partition_path(tmp_path, DAY)) == [3, 8, 9]
    assert seqs(partition_path(tmp_path, DAY + timedelta(days=1))) == [5]
    assert last_written_seq(tmp_path) == 9
    write(tmp_path, line(12, DAY + timedelta(days=1)))
    assert last_written_seq(tmp_path) == 12


def test_lines_are_compact_json_with_a_newline(tmp_path: Path) -> None:
    write(tmp_path, line(1))
    raw = partition_path(tmp_path, DAY).read_bytes()
    assert raw.endswith(b"}\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {
        "seq": 1,
        "at": "2026-05-04T10:00:00Z",
        "job_id": "J",
        "task_id": "J-1",
        "kind": "sum",
        "status": "succeeded",
        "inputs": {"a": 1, "b": 1},
        "output": {"sum": 2},
        "worker_id": "w",
        "attempts": 1,
        "duration_s": 0.1,
        "error": None,
    }


@pytest.mark.parametrize(
    "tail",
    [
        b'{"seq": 7, "at": "2026-05-',  # torn: no newline
        b'{"seq": 7, "at": "2026-05-04T10:00:00Z", "job',  # torn in another place
        b"\x00\x00\x00\x00",  # a size extended before its data reached the disk
        b"garbage\n",  # whole but undecodable
        b"\n",  # an empty line
        b'{"not": "a result"}\n',  # decodes, but has no seq
        b"{broken\n{also broken",  # several bad lines
    ],
)
def test_a_bad_tail_is_truncated_by_repair_only(tmp_path: Path, tail: bytes) -> None:
    write(tmp_path, line(4), line(6))
    path = partition_path(tmp_path, DAY)
    good = path.read_bytes()
    path.write_bytes(good + tail)

    assert last_written_seq(tmp_path) == 6
    assert path.read_bytes() == good + tail  # reading does not change the file
    assert repair_partitions(tmp_path) == 6
    assert path.read_bytes() == good
    write(tmp_path, line(7))
    assert seqs(path) == [4, 6, 7]


def test_a_file_holding_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = partition_path(tmp_path, DAY)
    path.write_bytes(b'{"seq": 1, "at"')
    write(tmp_path, line(2, DAY + timedelta(days=1)))
    assert repair_partitions(tmp_path) == 2
    assert path.read_bytes() == b""


def test_lines_longer_than_the_read_chunk(tmp_path: Path) -> None:
    big = {"blob": "x" * (3 * READ_CHUNK)}
    write(tmp_path, line(1, output=big), line(2, output=big))
    path = partition_path(tmp_path, DAY)
    whole = path.read_bytes()
    path.write_bytes(whole[:-READ_CHUNK])  # tear the second line far from its start
    assert last_written_seq(tmp_path) == 1
    assert repair_partitions(tmp_path) == 1
    assert seqs(path) == [1]
    assert json.loads(path.read_text())["output"] == big


def test_partitions_are_utc_days(tmp_path: Path) -> None:
    tokyo = timezone(timedelta(hours=9))
    assert partition_path(tmp_path, datetime(2026, 5, 5, 8, 59, tzinfo=tokyo)).name == (
        "results-2026-05-04.ndjson"
    )
    assert partition_path(tmp_path, datetime(2026, 5, 4, 23, 59, 59)).name == (
        "results-2026-05-04.ndjson"
    )


def item(seq: int, data: bytes) -> SourceItem:
    return decode_item(seq, "evt.task.J.J-0", data)


def test_only_finished_tasks_make_lines() -> None:
    succeeded = TaskSucceeded(
        job_id="J",
        task_id="J-0",
        kind="sum",
        args={"a": 2, "b": 3},
        worker_id="w",
        attempt=2,
        result={"sum": 5},
        duration_s=1.5,
        at=DAY,
    )
    dead = TaskDeadLettered(
        job_id="J",
        task_id="J-1",
        kind="sum",
        args={"a": 1},
        reason="max attempts",
        attempts=3,
        at=DAY,
    )
    started = TaskStarted(
        job_id="J", task_id="J-0", worker_id="w", attempt=1, lease_deadline=DAY, at=DAY
    )
    made = result_line(item(10, encode(succeeded)))
    assert made == ResultLine(
        seq=10,
        at=DAY,
        job_id="J",
        task_id="J-0",
        kind="sum",
        status="succeeded",
        inputs={"a": 2, "b": 3},
        output={"sum": 5},
        worker_id="w",
        attempts=2,
        duration_s=1.5,
        error=None,
    )
    made = result_line(item(11, encode(dead)))
    assert made is not None
    assert (made.status, made.attempts, made.error, made.worker_id) == (
        "dead_lettered",
        3,
        "max attempts",
        "",
    )
    assert result_line(item(12, encode(started))) is None
    assert result_line(item(13, b"not json")) is None


def test_the_events_of_a_streamed_job_make_no_lines() -> None:
    events = [
        JobSubmitted(job_id="J", sealed=False, tasks=[], at=DAY),
        JobTasksAdded(job_id="J", batch=0, first_index=0, tasks=[TaskSpec(kind="noop")], at=DAY),
        JobSealed(job_id="J", batches=1, task_count=1, at=DAY),
    ]
    for seq, event in enumerate(events, start=1):
        assert result_lines(decode_item(seq, "evt.job.J", encode(event))) == []


def test_a_chunk_makes_a_numbered_line_per_task_that_succeeded() -> None:
    def done(index: int) -> ChunkResult:
        return ChunkResult(
            task_id=f"J-{index}", kind="sum", args={"a": index}, result=index, duration_s=0.5
        )

    def finished(results: list[ChunkResult], failed: list[ChunkFailure]) -> SourceItem:
        event = TaskChunkFinished(
            job_id="J",
            task_id="J-c0",
            worker_id="w",
            attempt=2,
            duration_s=2.0,
            results=results,
            failed=failed,
            at=DAY,
        )
        return item(20, encode(event))

    failure = ChunkFailure(task_id="J-1", kind="sum", error="boom")
    made = result_lines(finished([done(0), done(2)], [failure]))
    assert made == [
        ResultLine(
            seq=20,
            at=DAY,
            job_id="J",
            task_id=f"J-{index}",
            kind="sum",
            status="succeeded",
            inputs={"a": index},
            output=index,
            worker_id="w",
            attempts=2,
            duration_s=0.5,
            error=None,
            part=part,
            parts=2,
        )
        for part, index in ((1, 0), (2, 2))
    ]
    assert result_line(finished([done(0), done(2)], [])) is None
    [alone] = result_lines(finished([done(0)], [failure]))
    assert (alone.task_id, alone.part, alone.parts) == ("J-0", None, None)
    assert result_lines(finished([], [failure])) == []


def test_only_the_lines_of_an_event_with_several_say_which_part_they_are(
    tmp_path: Path,
) -> None:
    write(tmp_path, line(1), *chunk(2, 2))
    single, first, second = map(json.loads, partition_path(tmp_path, DAY).read_text().splitlines())
    assert "part" not in single and "parts" not in single
    assert (first["part"], first["parts"], second["part"], second["parts"]) == (1, 2, 2, 2)
    assert last_written_seq(tmp_path) == 2


@pytest.mark.parametrize("whole_parts", [0, 1, 2])
@pytest.mark.parametrize("torn", [False, True])
def test_the_lines_of_a_partly_written_event_are_all_removed(
    tmp_path: Path, whole_parts: int, torn: bool
) -> None:
    write(tmp_path, line(4), *chunk(6, 3))
    path = partition_path(tmp_path, DAY)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    kept = b"".join(lines[: 1 + whole_parts])
    if torn:  # the next part half written
        kept += lines[1 + whole_parts][:20]
    path.write_bytes(kept)

    assert last_written_seq(tmp_path) == 4
    assert repair_partitions(tmp_path) == 4
    assert path.read_bytes() == lines[0]
    write(tmp_path, *chunk(6, 3))
    assert seqs(path) == [4, 6, 6, 6]
    assert last_written_seq(tmp_path) == 6


def test_an_event_whose_lines_are_all_written_is_kept(tmp_path: Path) -> None:
    write(tmp_path, line(4), *chunk(6, 3))
    path = partition_path(tmp_path, DAY)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq": 7, "at"')
    assert repair_partitions(tmp_path) == 6
    assert path.read_bytes() == whole


def test_the_checkpoint_is_the_last_whole_event_of_all_files(tmp_path: Path) -> None:
    next_day = DAY + timedelta(days=1)
    write(tmp_path, *chunk(3, 2), *chunk(8, 2, next_day)[:1])
    assert last_written_seq(tmp_path) == 3
    assert repair_partitions(tmp_path) == 3
    assert partition_path(tmp_path, next_day).read_bytes() == b""
    assert seqs(partition_path(tmp_path, DAY)) == [3, 3]
