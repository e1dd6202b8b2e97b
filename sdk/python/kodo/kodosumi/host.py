"""A Kodosumi app's forms, served to kodo over stdin/stdout (JSON lines):

    python3 -m kodo.kodosumi.host pkg.mod:app --path /

kodo runs one per `kodosumi = "pkg.mod:app"` flow. Once it has imported
the app it says `{"ready": true}` (or `{"error": ...}` and exits); then kodo
asks it, one request at a time, before anything of a launch is stored:

    {"op": "form"}                         -> {"form": {...metadata, "elements": [...]}}
    {"op": "enter", "inputs": {...},
     "user": "ann"}                        -> {"launch": {"entry_point": "pkg.mod:fn",
                                                         "inputs": {...}}}
                                              or {"errors": {"field": [...], "_global_": [...]}}
    {"op": "lease", "name": "approve",
     "data": {...}, "answer": {...}}       -> {"result": ...} (what the flow's lock returns)
                                              or {"errors": {...}} (the lock stays open)

Anything else that goes wrong is {"error": "..."} (the handler's
traceback's last line). The module is imported once, unmodified, with the
stand-ins of `kodo.kodosumi`."""
import argparse
import asyncio
import dataclasses
import json
import os
import sys
import traceback

from . import resolve, use_standins


def entry_point_name(entry_point):
    """`pkg.mod:fn` for a function, the text as it was for a string."""
    if isinstance(entry_point, str):
        return entry_point
    module = getattr(entry_point, "__module__", None)
    name = getattr(entry_point, "__qualname__", None)
    if not module or not name or "<" in name:
        raise TypeError(f"entry point {entry_point!r}: give a module-level function or 'pkg.mod:fn'")
    return f"{module}:{name}"


def _plain(value):
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON: give plain values")


def jsonable(value):
    """`value` as JSON carries it (pydantic models and dataclasses as their
    fields); anything else raises TypeError, naming its type."""
    return json.loads(json.dumps(value, default=_plain, allow_nan=False))


async def answer(app, entry, request):
    from .errors import InputsError

    op = request.get("op")
    if op == "form":
        meta = {k: v for k, v in entry.meta.items() if k != "openapi_extra"}
        return {"form": jsonable({**meta, "elements": entry.model.get_model()})}
    if op == "enter":
        try:
            launched = await entry.submit(request.get("inputs") or {}, request.get("user", "_annon_"), app)
        except InputsError as e:
            return {"errors": e.all_errors()}
        return {"launch": {
            "entry_point": entry_point_name(launched.entry_point),
            "inputs": jsonable(launched.inputs if launched.inputs is not None else {}),
        }}
    if op == "lease":
        data = request.get("data")
        # The lock's data as the flow's Tracer wrote it: {"form", "data"}.
        if isinstance(data, dict) and set(data) == {"form", "data"}:
            data = data["data"]
        try:
            result = await app.lease_answer(request.get("name"), data, request.get("answer"))
        except InputsError as e:
            return {"errors": e.all_errors()}
        return {"result": jsonable(result)}
    return {"error": f"unknown op {op!r}"}


def main():
    parser = argparse.ArgumentParser(prog="python3 -m kodo.kodosumi.host")
    parser.add_argument("target", help="pkg.mod:app")
    parser.add_argument("--path", required=True, help="the @app.enter route")
    args = parser.parse_args()
    use_standins()
    # The answers go on a copy of fd 1; fd 1 itself (print, a subprocess,
    # C code) goes to stderr, so nothing else can mix into the answers.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        app = resolve(args.target)
        entry = app.entry(args.path)
    except BaseException as e:
        traceback.print_exc()
        out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        return 1
    # Imported: kodo waits longer for this line than for an answer.
    out.write(json.dumps({"ready": True}) + "\n")
    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        try:
            reply = loop.run_until_complete(answer(app, entry, json.loads(line)))
        except BaseException as e:
            traceback.print_exc()
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
