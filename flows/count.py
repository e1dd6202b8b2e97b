"""A command flow in Python with durable steps: counts to `to` (default
100), a tick every `every` seconds (default 0.1), each tick a step. Run
with `recover = "resume"` (or in durable mode) it goes on after a crash
from the last tick journaled, not from 1."""
import time

import kodo

args = kodo.inputs()
to = int(args.get("to", 100))
every = float(args.get("every", 0.1))


def tick(i):
    print(f"tick {i}")
    time.sleep(every)
    return i


for i in range(1, to + 1):
    kodo.step("tick", lambda: tick(i))
kodo.result({"counted": to})
