"""kodo's command-flow protocol, one import away (the protocol itself:
docs/protocol.md in the kodo repository).

    import kodo
    args = kodo.inputs()              # the inputs (JSON object)
    kodo.debug("working")             # any kind a flow may emit
    answer = kodo.lock("approve", {"question": "ok?"}, timeout=600)
    kodo.result({"approved": answer}) # the last result becomes `final`

print() lines become `stdout` events, stderr lines `stderr` events.

Order: stdout, stderr and fd 3 (where emit, result and lock write) are
separate pipes. Each keeps its own order, and kodo stores every complete
stdout and stderr line written before an fd-3 line ahead of that event: a
print() before a lock is stored before the lock. That needs the line to
leave Python's buffer first, so this module line-buffers stdout and stderr
(a pipe is block-buffered by default). Lines written after an fd-3 line may
be stored before it.
"""
import json
import os
import sys

sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)
_fd3 = os.fdopen(3, "w", buffering=1)
_inputs = None


def inputs():
    """The execution's inputs (read once from the first stdin line)."""
    global _inputs
    if _inputs is None:
        _inputs = json.loads(sys.stdin.readline() or "{}")
    return _inputs


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
