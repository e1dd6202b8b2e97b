"""kodo's command-flow protocol for Python (the protocol itself:
docs/protocol.md in the kodo repository). Standard library only.

    import kodo
    args = kodo.inputs()              # the inputs (a dict)
    kodo.debug("working")             # debug, action, result, agent, upload
    kodo.emit("action", {"step": 1})  # any kind a flow may emit
    answer = kodo.lock("approve", {"question": "ok?"}, timeout=600)
    kodo.result({"approved": answer}) # the last result becomes `final`

    rows = kodo.step("fetch", lambda: fetch(url))   # durable steps: run once,
    @kodo.step                                      # replayed from the journal
    def charge(): ...                               # when the execution resumes

Async code awaits the same verbs: `await kodo.alock(...)`,
`await kodo.astep(...)` (an `async def` step works with `kodo.step` too);
`await kodo.adebug(...)` and friends are the emits' async forms. An emit
returns once its line is written to fd 3, which waits only while kodo
holds back a flow that emits faster than it stores. Locks may be awaited
concurrently (`asyncio.gather`) or opened from several threads: give those
open at once distinct names. Steps are numbered in the order they are
taken, so take them in an order that is the same on every run (not from
racing threads).

A step's result is journaled (a `step` event) and stored before step()
returns. When the execution runs again after a crash (`recover = "resume"`,
or a durable retry), each step already done returns its journaled result
without running; steps are matched by their order and name.

print() lines become `stdout` events, stderr lines `stderr` events.

Order: stdout, stderr and fd 3 (where emits, locks and steps go) are
separate pipes. Each keeps its own order, and kodo stores every complete
stdout and stderr line written before an fd-3 line ahead of that event: a
print() before a lock is stored before the lock. That needs the line to
leave Python's buffer first, so this module line-buffers stdout and stderr
(a pipe is block-buffered by default). Lines written after an fd-3 line may
be stored before it.
"""
import asyncio
import collections
import functools
import inspect
import json
import os
import sys
import threading

__all__ = [
    "inputs", "emit", "debug", "action", "result", "agent", "upload",
    "adebug", "aaction", "aresult", "aemit",
    "lock", "alock", "step", "astep", "StepChanged", "NotUnderKodo",
]
__version__ = "0.1.0"

sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)


class NotUnderKodo(RuntimeError):
    """This process was not started by kodo (no fd 3 to write events to)."""


class StepChanged(RuntimeError):
    """The flow's steps no longer match the journal of this execution."""


class _Reply:
    """One awaited stdin line: waited on by a thread or an event loop."""

    def __init__(self):
        self._done = threading.Event()
        self._value = None
        self._callbacks = []
        self._guard = threading.Lock()

    def set(self, value):
        with self._guard:
            self._value = value
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(value)

    def wait(self):
        self._done.wait()
        return self._value

    async def wait_async(self):
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(value):
            try:
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(value))
            except RuntimeError:
                pass  # its event loop is closed: nobody waits any more

        with self._guard:
            if self._done.is_set():
                return self._value
            self._callbacks.append(resolve)
        return await future


class _Channel:
    """fd 3 out, stdin in: the inputs, the journal, then replies to locks
    (by name, first opened first answered) and steps (by number), read by
    one thread and handed to whoever waits for them."""

    def __init__(self):
        self._write_lock = threading.Lock()
        self._state = threading.Lock()
        self._fd3 = None
        self._inputs = None
        self.journal = {}
        self._locks = collections.defaultdict(collections.deque)
        self._steps = {}
        self._closed = None
        self.steps_taken = 0

    def inputs(self):
        with self._state:
            if self._inputs is None:
                self._inputs = json.loads(sys.stdin.readline() or "{}")
                for _ in range(int(os.environ.get("KODO_JOURNAL") or 0)):
                    entry = json.loads(sys.stdin.readline())
                    self.journal[entry["n"]] = entry
                threading.Thread(target=self._read, name="kodo-replies", daemon=True).start()
            return self._inputs

    def write(self, message):
        with self._write_lock:
            self._write_locked(message)

    def _write_locked(self, message):
        line = json.dumps(message, allow_nan=False) + "\n"
        if self._fd3 is None:
            try:
                self._fd3 = os.fdopen(3, "w", buffering=1)
            except OSError as e:
                raise NotUnderKodo(
                    "kodo: fd 3 is not open; run this flow under kodo (docs/protocol.md)"
                ) from e
        self._fd3.write(line)

    def ask(self, message, lock=None, step=None):
        """Writes `message` and returns the _Reply its answer will fill.
        The reply is expected and the line written under one lock, so two
        threads opening locks of one name get their own answers; a line
        that cannot be written leaves nothing waiting."""
        self.inputs()
        json.dumps(message, allow_nan=False)  # refused here, before anything waits
        reply = _Reply()
        with self._write_lock:
            with self._state:
                if self._closed is not None:
                    reply.set({"error": self._closed})
                    return reply
                if lock is not None:
                    self._locks[lock].append(reply)
                else:
                    self._steps[step] = (message["name"], reply)
            try:
                self._write_locked(message)
            except BaseException:
                self.forget(reply)
                raise
        return reply

    def forget(self, reply):
        """Stops expecting `reply` (its waiter gave up, or its line failed)."""
        with self._state:
            for waiting in self._locks.values():
                if reply in waiting:
                    waiting.remove(reply)
            for n, (_, waiter) in list(self._steps.items()):
                if waiter is reply:
                    del self._steps[n]

    def _step_waiter(self, reply):
        """The step a reply is for: by its number, else (a refusal may not
        have one) the oldest of its name, else the oldest."""
        n = reply.get("n")
        if n not in self._steps:
            named = [k for k, (name, _) in self._steps.items() if name == reply["step"]]
            n = min(named or self._steps or [None])
        entry = self._steps.pop(n, None)
        return entry and entry[1]

    def _read(self):
        try:
            for line in sys.stdin:
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(reply, dict):
                    continue
                waiter = None
                with self._state:
                    if "step" in reply:
                        waiter = self._step_waiter(reply)
                    elif "lid" in reply:
                        waiting = self._locks.get(reply.get("name"))
                        if waiting:
                            waiter = waiting.popleft()
                if waiter is not None:
                    waiter.set(reply)
        finally:
            self._close()

    def _close(self):
        with self._state:
            self._closed = "kodo closed stdin"
            waiting = [w for _, w in self._steps.values()]
            waiting += [w for q in self._locks.values() for w in q]
            self._steps.clear()
            self._locks.clear()
        for waiter in waiting:
            waiter.set({"error": self._closed})


_channel = _Channel()


def inputs():
    """The execution's inputs (read once from the first stdin line), and the
    journal of steps that follows them (KODO_JOURNAL lines)."""
    return _channel.inputs()


def emit(kind, payload):
    """Records an event: agent, upload, debug, stdout, stderr, action or
    result (any JSON value). Returns at once; kodo stores it in order."""
    _channel.write({"kind": kind, "payload": payload})


def debug(text):
    """A `debug` event."""
    emit("debug", text)


def action(payload):
    """An `action` event."""
    emit("action", payload)


def result(payload):
    """A `result` event; the last one becomes the execution's `final`."""
    emit("result", payload)


def agent(payload):
    """An `agent` event."""
    emit("agent", payload)


def upload(payload):
    """An `upload` event."""
    emit("upload", payload)


async def aemit(kind, payload):
    """emit(), awaitable."""
    emit(kind, payload)


async def adebug(text):
    """debug(), awaitable."""
    debug(text)


async def aaction(payload):
    """action(), awaitable."""
    action(payload)


async def aresult(payload):
    """result(), awaitable."""
    result(payload)


def _lock_message(name, data, timeout):
    return {"kind": "lock", "name": name, "data": data, "timeout": timeout}


def _answer(name, reply):
    if "error" in reply:
        raise TimeoutError(f"lock {name} {reply['error']}")
    return reply["answer"]


def lock(name, data=None, timeout=None):
    """Asks a person (kodo opens a lock named `name` with `data`); returns
    the answer, or raises TimeoutError when the lock expires (after
    `timeout` seconds, or kodo's default)."""
    reply = _channel.ask(_lock_message(name, data, timeout), lock=name)
    return _answer(name, reply.wait())


async def _awaited(reply):
    """`reply`'s line; a cancelled wait stops expecting it."""
    try:
        return await reply.wait_async()
    except BaseException:
        _channel.forget(reply)
        raise


async def alock(name, data=None, timeout=None):
    """lock(), awaited without blocking the event loop."""
    reply = _channel.ask(_lock_message(name, data, timeout), lock=name)
    return _answer(name, await _awaited(reply))


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
    return _stored(name, value, _channel.ask(_step_message(n, name, value), step=n).wait())


async def astep(name, fn):
    """The async form of step(): awaits fn() once."""
    n, done, value = _replayed(name)
    if done:
        return value
    value = fn()
    if inspect.isawaitable(value):
        value = await value
    reply = _channel.ask(_step_message(n, name, value), step=n)
    return _stored(name, value, await _awaited(reply))


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
    _channel.inputs()
    with _channel._state:
        _channel.steps_taken += 1
        n = _channel.steps_taken
    entry = _channel.journal.get(n)
    if entry is None:
        return n, False, None
    if entry["name"] != name:
        raise StepChanged(
            f'step {n} is "{name}" but the journal holds "{entry["name"]}" there: '
            "the flow changed since this execution began"
        )
    return n, True, entry["result"]


def _step_message(n, name, value):
    # Checked here: a value that is not JSON raises ValueError or TypeError
    # before anything is written.
    json.dumps(value, allow_nan=False)
    return {"kind": "step", "name": name, "n": n, "payload": value}


def _stored(name, value, reply):
    """Step `name`'s result as the journal gives it back, once stored."""
    if reply.get("step") != name or not reply.get("stored"):
        raise RuntimeError(f"step {name} not journaled: {reply.get('error', reply)}")
    return json.loads(json.dumps(value))
