"""A command flow in Python: asks a person to approve, then reports the answer."""
import kodo

args = kodo.inputs()
kodo.debug("asking for approval")
answer = kodo.lock("approve", {"question": f"Approve {args.get('item', 'this')}?"}, timeout=600)
print(f"the answer was {answer}")
kodo.result({"item": args.get("item"), "approved": answer})
