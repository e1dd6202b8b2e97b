"""kodo's command-flow protocol, one import away (the protocol itself:
docs/protocol.md in the kodo repository).

    import kodo
    args = kodo.inputs()              # the inputs (JSON object)
    kodo.debug("working")             # any kind a flow may emit
    answer = kodo.lock("approve", {"question": "ok?"}, timeout=600)
    kodo.result({"approved": answer}) # the last result becomes `final`

    rows = kodo.step("fetch", lambda: fetch(url))   # durable steps: run once,
    @kodo.step                                      # replayed from the journal
    def charge(): ...                               # when the execution resumes

A step's result is journaled (a `step` event) and stored before step()
returns. When the execution runs again after a crash (`recover = "resume"`,
or a durable retry), each step already done returns its journaled result
without running; steps are matched by their order and name.

print() lines become `stdout` events, stderr lines `stderr` events.

Order: stdout, stderr and fd 3 (where emit, result and lock write) are
separate pipes. Each keeps its own order, and kodo stores every complete
stdout and stderr line written before an fd-3 line ahead of that event: a
print() before a lock is stored before the lock. That needs the line to
leave Python's buffer first, so this module line-buffers stdout and stderr
(a pipe is block-buffered by default). Lines written after an fd-3 line may
be stored before it.
"""
import functools
import inspect
import json
import os
import sys

sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)
_fd3 = os.fdopen(3, "w", buffering=1)
_inputs = None


_journal = {}
_steps_taken = 0


def inputs():
    """The execution's inputs (read once from the first stdin line), and the
    journal of steps that follows them (KODO_JOURNAL lines)."""
    global _inputs
    if _inputs is None:
        _inputs = json.loads(sys.stdin.readline() or "{}")
        for _ in range(int(os.environ.get("KODO_JOURNAL") or 0)):
            entry = json.loads(sys.stdin.readline())
            _journal[entry["n"]] = entry
    return _inputs


class StepChanged(RuntimeError):
    """The flow's steps no longer match the journal of this execution."""


def step(name, fn=None):
    """Runs fn() once as step `name` and returns its result (JSON values);
    when the execution runs again, returns the journaled result instead.

    kodo.step("name", fn) runs it now; an async fn gives an awaitable
    (or use `await kodo.astep(...)`). As a decorator, @kodo.step or
    @kodo.step("name"), every call of the function is a step."""
    if fn is None:
        if callable(name):
            return _decorated(name.__name__, name)
        return lambda f: _decorated(name, f)
    if inspect.iscoroutinefunction(fn):
        return astep(name, fn)
    n, done, value = _replayed(name)
    if done:
        return value
    value = fn()
    if inspect.isawaitable(value):
        raise TypeError(f"step {name}: an async step needs an async def, or kodo.astep")
    return _record(n, name, value)


async def astep(name, fn):
    """The async form of step(): awaits fn() once."""
    n, done, value = _replayed(name)
    if done:
        return value
    value = fn()
    if inspect.isawaitable(value):
        value = await value
    return _record(n, name, value)


def _decorated(name, fn):
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args, **kwargs):
            return await astep(name, lambda: fn(*args, **kwargs))
        return run_async

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return step(name, lambda: fn(*args, **kwargs))
    return run


def _replayed(name):
    """The next step's number, and (True, result) when the journal holds
    it; raises StepChanged when the journal holds another step there."""
    global _steps_taken
    inputs()
    _steps_taken += 1
    n = _steps_taken
    entry = _journal.get(n)
    if entry is None:
        return n, False, None
    if entry["name"] != name:
        raise StepChanged(
            f'step {n} is "{name}" but the journal holds "{entry["name"]}" there: '
            "the flow changed since this execution began"
        )
    return n, True, entry["result"]


def _record(n, name, value):
    """Journals step n's result; returns it as the journal gives it back,
    once stored (a value that is not JSON raises ValueError or TypeError)."""
    line = json.dumps({"kind": "step", "name": name, "n": n, "payload": value}, allow_nan=False)
    _fd3.write(line + "\n")
    reply = json.loads(sys.stdin.readline() or "{}")
    if reply.get("step") != name or not reply.get("stored"):
        raise RuntimeError(f"step {name} not journaled: {reply.get('error', reply)}")
    return json.loads(json.dumps(value))


def emit(kind, payload):
    """Records an event: agent, upload, debug, stdout, stderr, action or result."""
    _fd3.write(json.dumps({"kind": kind, "payload": payload}) + "\n")


def debug(text):
    emit("debug", text)


def action(payload):
    emit("action", payload)


def result(payload):
    emit("result", payload)


def lock(name, data=None, timeout=None):
    """Asks a person; returns the answer, or raises TimeoutError when the lock expires."""
    inputs()
    _fd3.write(json.dumps({"kind": "lock", "name": name, "data": data, "timeout": timeout}) + "\n")
    reply = json.loads(sys.stdin.readline())
    if "error" in reply:
        raise TimeoutError(f"lock {name} {reply['error']}")
    return reply["answer"]
