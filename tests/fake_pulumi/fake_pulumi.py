"""A stand-in `pulumi` CLI for the deploy driver's tests: the real Automation API drives it.

It records every invocation (argv, cwd, the PULUMI_* and MY_SAAS_CHAT_* environment) to
$FAKE_PULUMI_DIR/calls.jsonl, keeps config and update history in $FAKE_PULUMI_DIR/state.json, and
plays the outcomes queued in $FAKE_PULUMI_DIR/scenario.json: for `up`, `preview`, `refresh` and
`destroy` the next entry of that command's list, {"result": "succeeded"|"failed"|"locked"|
"not-logged-in", "events": [engine events]}, sent to --event-log as the CLI does: streamed over
gRPC (`tcp://host:port`, pulumirpc.Events/StreamEvents, CLI >= 3.206) or appended to a file, each
followed by a summaryEvent and a cancelEvent.
"""

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HOME = Path(os.environ["FAKE_PULUMI_DIR"])
STATE, SCENARIO, CALLS = HOME / "state.json", HOME / "scenario.json", HOME / "calls.jsonl"
FORMAT = "%Y-%m-%dT%H:%M:%S.000Z"


def load(path, default):
    return json.loads(path.read_text()) if path.exists() else default


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


def now():
    return datetime.now(UTC).strftime(FORMAT)


def fail(message, code=255):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def send(target, events):
    if target.startswith("tcp://"):
        import grpc
        from pulumi.runtime.proto import events_pb2, events_pb2_grpc

        with grpc.insecure_channel(target[len("tcp://"):]) as channel:
            events_pb2_grpc.EventsStub(channel).StreamEvents(
                iter([events_pb2.EventRequest(event=json.dumps(e)) for e in events]))
        return
    with open(target, "a") as out:
        out.writelines(json.dumps(e) + "\n" for e in events)


def main(argv):
    with CALLS.open("a") as out:
        out.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": {
            k: v for k, v in os.environ.items() if k.startswith(("PULUMI_", "MY_SAAS_CHAT_"))}}) + "\n")
    argv = [a for a in argv if a != "--non-interactive"]  # the SDK puts it first on every command
    state = load(STATE, {"config": {}, "history": []})
    scenario = load(SCENARIO, {})
    command = [a for a in argv if not a.startswith("-")][:2]
    if argv[:1] == ["version"]:
        print("v3.272.0")
        return
    if command[:2] == ["stack", "select"]:
        if scenario.get("select") == "not-logged-in":
            fail("error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions")
        return
    if command[:2] == ["config", "set"]:
        key, value = argv[2], argv[argv.index("--") + 1]
        state["config"][key] = {"value": value, "secret": "--secret" in argv}
    elif command[:2] == ["config", "get"]:
        key = argv[2]
        if key not in state["config"]:
            fail(f"error: configuration key '{key}' not found for stack")
        print(json.dumps(state["config"][key]))
        return
    elif command[:2] == ["stack", "history"]:
        history = list(reversed(state["history"]))
        size = flag(argv, "--page-size")
        print(json.dumps(history[: int(size)] if size else history))
        return
    elif command[:2] == ["stack", "output"]:
        print("{}")
        return
    elif argv[:1] in (["up"], ["preview"], ["refresh"], ["destroy"]):
        kind = argv[0]
        queue = scenario.get(kind, [])
        outcome = queue.pop(0) if queue else {"result": "succeeded", "events": []}
        SCENARIO.write_text(json.dumps(scenario))
        if outcome["result"] == "locked":
            fail("error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end "
                 "or delete the lock file with `pulumi cancel`.")
        if outcome["result"] == "not-logged-in":
            fail("error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions")
        start = now()
        log = flag(argv, "--event-log")
        if log:
            events = [{"sequence": i, "timestamp": int(time.time()), **e} for i, e in enumerate(outcome.get("events", []))]
            events.append({"sequence": 998, "timestamp": int(time.time()), "summaryEvent": {
                "maybeCorrupt": False, "durationSeconds": 1, "resourceChanges": outcome.get("changes", {}),
                "PolicyPacks": {}}})
            events.append({"sequence": 999, "timestamp": int(time.time()), "cancelEvent": {}})
            send(log, events)
        if kind != "preview":
            state["history"].append({
                "kind": {"up": "update"}.get(kind, kind), "startTime": start, "endTime": now(),
                "message": flag(argv, "--message") or "", "environment": {"exec.kind": "auto.local"},
                "config": dict(state["config"]), "result": outcome["result"], "version": len(state["history"]) + 1,
                "resourceChanges": outcome.get("changes", {})})
        STATE.write_text(json.dumps(state))
        if outcome["result"] == "failed":
            fail("error: update failed")
        print(f"{kind}: done")
        return
    STATE.write_text(json.dumps(state))


if __name__ == "__main__":
    main(sys.argv[1:])
