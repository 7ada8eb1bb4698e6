"""The in-process executor (``run.runner=local``): the same stages, one call at a time.

Functions are called and actors built in this process, sequentially, without Ray: for
tests and debugging (a breakpoint in a worker stops right there). Actor pools become
one instance per pool key, so a batch's jobs share one model here too.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pipeline.runner.stage import Call, Settled, resolve


class LocalExecutor:
    def __init__(self) -> None:
        self.calls: deque[Call] = deque()
        self.actors: dict[str, Any] = {}
        self.owners: dict[str, int] = {}  # per-job actors: key -> id(job)

    def has_room(self, call: Call, in_flight_for_stage: int) -> bool:  # noqa: ARG002
        return not self.calls  # one at a time: a stop request is seen between calls

    def submit(self, call: Call) -> None:
        self.calls.append(call)

    def flush(self) -> None:
        """Calls run one at a time here: nothing is packed."""

    def in_flight(self) -> int:
        return len(self.calls)

    def cancel_functions(self) -> None:
        self.calls.clear()

    def _actor(self, call: Call) -> Any:
        spec = call.pool
        assert spec is not None
        if spec.key not in self.actors:
            self.actors[spec.key] = resolve(spec.target)(*spec.init, **spec.init_kwargs)
            if spec.per_job:
                self.owners[spec.key] = id(call.job)
        return self.actors[spec.key]

    def next(self, timeout: float) -> Settled | None:  # noqa: ARG002 - never waits
        if not self.calls:
            return None
        call = self.calls.popleft()
        try:
            if call.stage.actor:
                result = getattr(self._actor(call), call.method)(*call.args)
            else:
                result = resolve(call.stage.target)(*call.args)
        except Exception as exc:  # noqa: BLE001 - settled as the call's error
            return Settled(call, error=exc)
        return Settled(call, result=result)

    def release(self, job: Any) -> None:
        for key in [k for k, owner in self.owners.items() if owner == id(job)]:
            self.owners.pop(key)
            self.actors.pop(key, None)

    def close_pools(self, keep: str | None = None) -> None:
        for key in [k for k in self.actors if k != keep]:
            self.actors.pop(key)

    def close(self) -> None:
        self.actors.clear()
