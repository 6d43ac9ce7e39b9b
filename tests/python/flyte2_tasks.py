"""Flyte 2 tasks for tests/python/flyte2_task.py `a0`: a parent that awaits two children at once,
so the parent's Watch carries several updates. The children's bodies never run here: the
control plane (the stand-in) reports each child SUCCEEDED as soon as it is enqueued."""
import asyncio

import flyte

env = flyte.TaskEnvironment(name="flyte2_tasks")


@env.task
async def child(n: int) -> None:
    print(f"child {n} body (not run under the stand-in)")


@env.task
async def parent() -> None:
    await asyncio.gather(child(1), child(2))
    print("flyte2_tasks: parent done, 2 children", flush=True)
