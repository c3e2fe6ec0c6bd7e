"""Internal: turning rows into value objects, and the JSON shapes stored in columns."""

from __future__ import annotations

from typing import Any, Mapping

from .types import RunInfo, TaskInfo, TaskResultSnapshot


def cancellation_dict(max_delay: float | None, max_duration: float | None) -> dict[str, Any] | None:
    """Rebuild the ``cancellation`` policy dict from its two columns."""
    out: dict[str, Any] = {}
    for key, value in (("max_delay", max_delay), ("max_duration", max_duration)):
        if value is not None:
            out[key] = int(value) if float(value).is_integer() else value
    return out or None


def snapshot(state: str, result: Any, failure: Any) -> TaskResultSnapshot:
    """The public result view: result only when completed, failure only when failed."""
    return TaskResultSnapshot(
        state=state,  # type: ignore[arg-type]
        result=result if state == "completed" else None,
        failure=failure if state == "failed" else None,
    )


def snapshot_to_json(snap: TaskResultSnapshot) -> dict[str, Any]:
    """How a child's outcome is stored in its parent's checkpoint."""
    out: dict[str, Any] = {"state": snap.state}
    if snap.state == "completed":
        out["result"] = snap.result
    elif snap.state == "failed":
        out["failure"] = snap.failure
    return out


def snapshot_from_json(value: Mapping[str, Any]) -> TaskResultSnapshot:
    """Inverse of :func:`snapshot_to_json`."""
    return TaskResultSnapshot(
        state=value["state"], result=value.get("result"), failure=value.get("failure")
    )


def run_info(row: Any) -> RunInfo:
    """A runs row as :class:`RunInfo`."""
    return RunInfo(
        run_id=row.run_id,
        task_id=row.task_id,
        attempt=row.attempt,
        state=row.state,
        claimed_by=row.claimed_by,
        claim_expires_at=row.claim_expires_at if row.state == "running" else None,
        available_at=row.available_at,
        wake_event=row.wake_event,
        event_payload=row.event_payload,
        started_at=row.started_at,
        completed_at=row.completed_at,
        failed_at=row.failed_at,
        result=row.result,
        failure=row.failure,
        created_at=row.created_at,
    )


def task_info(row: Any, failure: Any, runs: list[RunInfo], checkpoints: dict[str, Any]) -> TaskInfo:
    """A tasks row (plus its runs and checkpoints) as :class:`TaskInfo`."""
    return TaskInfo(
        task_id=row.task_id,
        queue=row.queue,
        task_name=row.task_name,
        state=row.state,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        params=row.params,
        headers=row.headers,
        retry_strategy=row.retry_strategy,
        cancellation=cancellation_dict(row.max_delay, row.max_duration),
        result=row.result if row.state == "completed" else None,
        failure=failure if row.state == "failed" else None,
        idempotency_key=row.idempotency_key,
        enqueued_at=row.enqueued_at,
        first_started_at=row.first_started_at,
        completed_at=row.completed_at,
        cancelled_at=row.cancelled_at,
        last_attempt_run=row.last_attempt_run,
        runs=runs,
        checkpoints=checkpoints,
    )
