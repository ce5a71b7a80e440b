"""What the strict mocks watch inside the SDK while the program runs, where the monitor cannot see.

- A resource constructed while an `Output.apply` callback runs: `pulumi preview` never shows it,
  because preview does not run callbacks on unknown values (pulumi/output.py: `Output.apply`).
- A `depends_on` cycle: each resource waits for the other's URN before it registers
  (pulumi/runtime/_depends_on.py: `_resolve_depends_on_urns`). It is found when the edge that
  closes it is resolved, and the whole cycle is named. (SDK 3.272's own check in
  pulumi/runtime/rpc.py: `_expand_dependencies` raises a RuntimeError naming one resource.)
- Any wait that can never end, such as a cycle through an Output (`depends_on` on an Output of a
  resource whose inputs wait for this one): nothing in the SDK sees it and the program waits
  forever. When nothing happens for `stall_seconds`, the run is stopped and the resources that
  never reached the monitor are named (a last resort, not the detector).
- Invoke arguments that were secret: the SDK unwraps them before it sends the request
  (pulumi/runtime/invoke.py: `_unwrap_rpc_secret_struct_properties`), so their wrapped form is
  handed to the monitor to record.

Everything patched is restored when the run ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pulumi.resource as resource_module
import pulumi.runtime.resource as resource_runtime
from google.protobuf import json_format, struct_pb2
from pulumi.output import Output
from pulumi.runtime import rpc
from pulumi.runtime._depends_on import _resolve_depends_on

from ops.mocks import StrictMocks, StrictMonitor

STALL_SECONDS = 30.0


class DependsOnCycle(Exception):
    """Raised inside the SDK so that the resources of a cycle fail instead of waiting forever."""


def label(res: Any) -> str:
    return f"{getattr(res, '_type', '?')} {getattr(res, '_name', '?')!r}"


class Guard:
    def __init__(self, strict: StrictMocks, monitor: StrictMonitor, stall_seconds: float) -> None:
        self.strict, self.monitor, self.stall_seconds = strict, monitor, stall_seconds
        self.apply_depth = 0
        self.applies = 0
        self.constructed: list[tuple[str, str]] = []
        self.waiting: dict[Any, set[Any]] = {}  # resource -> what its depends_on waits for
        self.resolving: set[Any] = set()  # resources whose depends_on (an Output) has not resolved yet
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stalled = False

    # -- resources created inside apply ------------------------------------------------------

    def wrap_apply(self, original: Callable[..., Any]) -> Callable[..., Any]:
        guard = self

        def apply(output: Output[Any], func: Callable[[Any], Any], run_with_unknowns: bool = False) -> Any:
            def callback(value: Any) -> Any:
                guard.apply_depth += 1
                guard.applies += 1
                try:
                    return func(value)
                finally:
                    guard.apply_depth -= 1
            return original(output, callback, run_with_unknowns)

        return apply

    def wrap_construction(self, original: Callable[..., Any], verb: str) -> Callable[..., Any]:
        guard = self

        def construct(res: Any, t: str, name: str, *args: Any, **kwargs: Any) -> Any:
            # Callbacks run on the event loop's thread, one at a time: a plain depth counter is exact
            # for resources constructed synchronously inside one.
            guard.constructed.append((t, name))
            if guard.apply_depth:
                guard.strict.violations.append(
                    f"{t} {name!r}: {verb} inside an Output.apply callback: `pulumi preview` never shows it "
                    "(preview does not run callbacks on unknown values); create it at the top level and pass "
                    "the Output as an input")
            return original(res, t, name, *args, **kwargs)

        return construct

    # -- depends_on cycles -------------------------------------------------------------------

    async def depends_on_urns(self, depends_on: Any, from_resource: Any = None) -> set[str]:
        # Same result as pulumi/runtime/_depends_on.py: _resolve_depends_on_urns, with the wait recorded.
        if not depends_on:
            return set()
        self.resolving.add(from_resource)
        try:
            deps = await _resolve_depends_on(depends_on)
        finally:
            self.resolving.discard(from_resource)
        if from_resource is None:
            return set((await rpc._expand_dependencies(deps, None)).keys())
        self.waiting[from_resource] = deps
        try:
            cycle = self._cycle(from_resource)
            if cycle:
                names = " -> ".join(label(r) for r in [*cycle, cycle[0]])
                self.strict.violations.append(
                    f"{label(from_resource)}: depends_on cycle: {names}; each waits for the next to be created, "
                    "so the engine would wait forever")
                raise DependsOnCycle(f"depends_on cycle: {names}")
            return set((await rpc._expand_dependencies(deps, from_resource)).keys())
        finally:
            self.waiting.pop(from_resource, None)

    def _cycle(self, start: Any) -> list[Any]:
        """A path start -> ... -> start through resources still waiting for their depends_on."""
        def edges(res: Any) -> set[Any]:
            out = set(self.waiting.get(res, ()))
            if not isinstance(res, resource_module.CustomResource):
                out |= set(getattr(res, "_childResources", ()))  # depends_on a component waits for its children
            return out

        path: list[Any] = []
        seen: set[int] = set()

        def visit(res: Any) -> bool:
            path.append(res)
            for nxt in edges(res):
                if nxt is start:
                    return True
                if id(nxt) not in seen and (nxt in self.waiting or not isinstance(nxt, resource_module.CustomResource)):
                    seen.add(id(nxt))
                    if visit(nxt):
                        return True
            path.pop()
            return False

        return path if visit(start) else []

    # -- secret invoke arguments -------------------------------------------------------------

    def wrap_unwrap_secrets(self, original: Callable[[Any], tuple[Any, bool]]) -> Callable[[Any], tuple[Any, bool]]:
        monitor = self.monitor

        def unwrap(value: Any) -> tuple[Any, bool]:
            plain, had_secrets = original(value)
            if had_secrets and isinstance(value, struct_pb2.Struct) and isinstance(plain, struct_pb2.Struct):
                key = json.dumps(json_format.MessageToDict(plain), sort_keys=True)
                monitor.secret_invoke_args[key] = json_format.MessageToDict(value)
            return plain, had_secrets

        return unwrap

    # -- the last resort ---------------------------------------------------------------------

    def progress(self) -> tuple[int, int, int]:
        return self.applies, len(self.constructed), self.monitor.calls

    def watch(self, stop: threading.Event) -> None:
        last, since = self.progress(), time.monotonic()
        while not stop.wait(min(0.1, self.stall_seconds / 4)):
            now = self.progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= self.stall_seconds and self.loop is not None:
                self.loop.call_soon_threadsafe(self._abort)
                return

    def _abort(self) -> None:
        self.stalled = True
        seen = {(r.type, r.name) for r in [*self.monitor.registrations.values(), *self.monitor.reads.values()]}
        pending = sorted({f"{t} {n!r}" for t, n in self.constructed if (t, n) not in seen and t != "pulumi:pulumi:Stack"})
        waiting = sorted(label(r) for r in {*self.waiting, *self.resolving} if r is not None)
        self.strict.violations.append(
            f"the program made no progress for {self.stall_seconds:g} s and was stopped: "
            f"never registered: {', '.join(pending) or 'nothing'}"
            + (f"; waiting on depends_on: {', '.join(waiting)}" if waiting else "")
            + " (a dependency cycle through inputs or depends_on, or an Output that never resolves)")
        assert self.loop is not None
        for task in asyncio.all_tasks(self.loop):
            task.cancel()


@contextmanager
def strict_runtime(strict: StrictMocks, monitor: StrictMonitor, stall_seconds: float = STALL_SECONDS) -> Iterator[Guard]:
    guard = Guard(strict, monitor, stall_seconds)
    saved = (Output.apply, resource_module.register_resource, resource_module.read_resource,
             resource_runtime._resolve_depends_on_urns, rpc._unwrap_rpc_secret_struct_properties)
    Output.apply = guard.wrap_apply(saved[0])  # type: ignore[method-assign]
    resource_module.register_resource = guard.wrap_construction(saved[1], "created")
    resource_module.read_resource = guard.wrap_construction(saved[2], "read")
    resource_runtime._resolve_depends_on_urns = guard.depends_on_urns
    rpc._unwrap_rpc_secret_struct_properties = guard.wrap_unwrap_secrets(saved[4])  # type: ignore[assignment]
    stop = threading.Event()
    watchdog = threading.Thread(target=guard.watch, args=(stop,), name="strict-mocks-stall-guard", daemon=True)
    watchdog.start()
    try:
        yield guard
    finally:
        stop.set()
        watchdog.join()
        (Output.apply, resource_module.register_resource, resource_module.read_resource,  # type: ignore[method-assign]
         resource_runtime._resolve_depends_on_urns, rpc._unwrap_rpc_secret_struct_properties) = saved
