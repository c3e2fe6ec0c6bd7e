"""absurd-orm demo: a worker on the embedded SQLite default running durable tasks.

Spawns an order workflow (checkpointed steps, a durable sleep, a wait for an approval
event, a child task it awaits) plus a few plain tasks, runs a worker with four threads,
emits the approval from the outside and prints every task as it finishes.

    python examples/demo.py            # uses $ABSURD_DATABASE_URL or sqlite:///absurd.db
"""

from __future__ import annotations

import threading
import time
import uuid

from absurd_orm import Engine

engine = Engine()  # the embedded default: sqlite:///absurd.db (or $ABSURD_DATABASE_URL)


@engine.register_task(name="pack-parcel")
def pack_parcel(params, ctx):
    """A child task: two steps."""
    box = ctx.step("choose-box", lambda: "small" if len(params["items"]) < 3 else "large")
    label = ctx.step("print-label", lambda: f"{params['order']}/{box}")
    return {"box": box, "label": label}


@engine.register_task(name="process-order", default_max_attempts=3)
def process_order(params, ctx):
    """Reserve stock, wait for approval, pack via a child task, cool down, then ship."""
    reserved = ctx.step("reserve-stock", lambda: {"items": params["items"], "held": True})
    approval = ctx.await_event(f"approved:{params['order']}", timeout=60)
    child = ctx.spawn("pack-parcel", {"order": params["order"], "items": reserved["items"]})
    parcel = ctx.await_task_result(child.task_id)
    ctx.sleep_for("cool-down", 1.0)
    shipped = ctx.step("ship", lambda: f"shipped {parcel.result['label']} ({approval['by']})")
    return {"parcel": parcel.result, "shipped": shipped, "attempt": ctx.attempt}


@engine.register_task(name="count-words")
def count_words(params, ctx):
    """A one-step task."""
    return ctx.step("count", lambda: len(params["text"].split()))


def main() -> None:
    """Migrate, spawn, work, emit, and show everything finish."""
    engine.migrate()
    engine.create_queue()
    started = time.monotonic()
    worker = threading.Thread(target=engine.start_worker,
                              kwargs={"concurrency": 4, "poll_interval": 0.1}, daemon=True)
    worker.start()

    order = f"order-{uuid.uuid4().hex[:6]}"
    tasks = {"process-order": engine.spawn("process-order", {"order": order, "items": ["a", "b"]})}
    for i, text in enumerate(["durable execution", "steps are checkpointed", "replay is cheap"]):
        tasks[f"count-words #{i + 1}"] = engine.spawn("count-words", {"text": text})
    print(f"database: {engine.sa_engine.url}")
    for label, spawned in tasks.items():
        print(f"spawned  {label:<18} {spawned.task_id}")

    time.sleep(0.5)  # let the order reach its wait, so the approval wakes it
    state = engine.fetch_task_result(tasks["process-order"].task_id).state
    print(f"order is {state}; emitting approved:{order}")
    engine.emit_event(f"approved:{order}", {"by": "demo"})

    for label, spawned in tasks.items():
        snap = engine.await_task_result(spawned.task_id, timeout=30)
        print(f"finished {label:<18} {snap.state:<9} {snap.result}")
    info = engine.get_task(tasks["process-order"].task_id)
    print("order checkpoints: " + ", ".join(info.checkpoints))
    engine.stop_worker()
    worker.join(timeout=10)
    print(f"all done in {time.monotonic() - started:.2f}s")


if __name__ == "__main__":
    main()
