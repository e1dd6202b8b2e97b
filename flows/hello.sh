#!/bin/sh
# A command flow in plain sh. Inputs arrive as one JSON line on stdin; every
# stdout line becomes a `stdout` event; JSON lines on fd 3 are structured events.
read -r inputs
echo "hello from kodo, inputs: $inputs"
i=1
while [ "$i" -le 5 ]; do
  echo "{\"kind\":\"action\",\"payload\":{\"step\":$i}}" >&3
  i=$((i + 1))
done
echo "{\"kind\":\"result\",\"payload\":{\"greeting\":\"hello\",\"inputs\":$inputs}}" >&3
