"""Kodosumi flows under kodo, unmodified: a Kodosumi entry point runs as a
kodo command flow.

    python3 -m kodo.kodosumi pkg.mod:fn     # or pkg.mod.fn

imports the user's module as it is and calls the entry point the way
Kodosumi's Runner does: `inputs` and `tracer` bound by name (both
optional), an `async def` awaited, a plain function run in a thread. What
the Tracer emits is encoded as Kodosumi encodes it (`serialize`), print()
and stderr become events, the return value becomes `final`, an exception
ends the execution in `error` with its traceback on stderr.

The stand-ins in `kodo/kodosumi/standins`: `kodosumi` comes first on
`sys.path` (kodo runs the app itself, so its ServeAPI, Launch and Tracer
are kodo's even where Kodosumi is installed); `ray` and `fastapi` come
last, so a real install of those wins.
"""
import asyncio
import dataclasses
import importlib
import json
import os
import sys
import traceback

import kodo

STANDINS = os.path.join(os.path.dirname(__file__), "standins")


def use_standins():
    """Makes the stand-ins importable: `kodosumi` before everything else on
    sys.path, `ray` and `fastapi` after it."""
    first = os.path.join(STANDINS, "first")
    last = os.path.join(STANDINS, "last")
    if first not in sys.path:
        sys.path.insert(0, first)
    if last not in sys.path:
        sys.path.append(last)


def serialize(value):
    """Kodosumi's payload encoding: `{"<ClassName>": value}`, lists as
    `{"__list__": [...]}`, pydantic models and dataclasses as their
    fields, anything else that is not JSON as `{"TypeError": str(value)}`."""
    if isinstance(value, (list, tuple)):
        return {"__list__": [serialize(v) for v in value]}
    name = type(value).__name__
    if hasattr(value, "model_dump"):
        return {name: value.model_dump()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: dataclasses.asdict(value)}
    if value is None or isinstance(value, (str, int, float, bool, dict)):
        return {name: value}
    return {"TypeError": str(value)}


def resolve(entry_point):
    """The object `entry_point` names: `"pkg.mod:obj"`, `"pkg.mod.obj"`, or
    the object itself (as Kodosumi accepts)."""
    if callable(entry_point):
        return entry_point
    if ":" in entry_point:
        module_name, _, attr = entry_point.partition(":")
    else:
        module_name, _, attr = entry_point.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"entry point {entry_point!r}: expected pkg.mod:fn or pkg.mod.fn")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ImportError(f"cannot import {module_name} for {entry_point}: {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"entry point {entry_point}: {module_name} has no {attr}") from None
    return obj


def run(target, path=None, inputs=None):
    """Runs one execution; returns the exit status (0, or 1 with the reason
    on stderr). `target` names an entry point, or (with `path`) a
    `ServeAPI` app whose `@app.enter(path)` handler decides, from the
    inputs, what runs (its `Launch`)."""
    use_standins()
    from .app import call_bound
    from .errors import InputsError
    from .tracer import Tracer

    if inputs is None:
        inputs = kodo.inputs()
    try:
        entry_point = target
        app = resolve(target) if path is not None else None
        launch = json.loads(os.environ.get("KODO_LAUNCH") or "null")
        if path is not None and isinstance(launch, dict) and launch.get("entry_point"):
            # kodo ran the app's @app.enter handler before the launch (its
            # host): the inputs are those its Launch gave.
            entry_point = launch["entry_point"]
        elif path is not None:
            owner = os.environ.get("KODO_OWNER", "_annon_")
            launched = asyncio.run(app.entry(path).submit(inputs, owner, app))
            entry_point, inputs = launched.entry_point, launched.inputs
        fn = resolve(entry_point)
        if hasattr(fn, "is_crew_class") or hasattr(fn, "kickoff"):
            raise TypeError(f"entry point {entry_point}: CrewAI crews are not supported yet")
        # As Kodosumi's Runner: `inputs` and `tracer` bound by name, a plain
        # function in a thread.
        entry = call_bound(fn, in_thread=True, inputs=inputs, tracer=Tracer(app))
        value = asyncio.run(entry)
    except InputsError as e:
        print(f"kodosumi: the inputs were refused: {json.dumps(e.all_errors())}", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    kodo.result(serialize(value))
    return 0
