from fastapi import Request
from kodosumi.core import InputsError, Launch, ServeAPI, Tracer
from kodosumi.core import forms as F
import ray
from ray import serve

app = ServeAPI()

model = F.Model(
    F.Markdown("# Hello"),
    F.InputText(label="Name", name="name", placeholder="your name"),
    F.InputNumber(label="Times", name="times", min_value=1, max_value=5),
    F.Checkbox(label="Loud", name="loud", option="shout it"),
    F.Select(label="Tone", name="tone", option=[
        F.InputOption(label="Warm", name="warm"),
        F.InputOption(label="Cool", name="cool"),
    ], value="warm"),
    F.InputArea(label="Note", name="note"),
    F.Submit("Greet"),
    F.Cancel("Cancel"),
)


@app.enter("/", model=model, summary="Hello", description="Greets someone",
           tags=["demo"], version="1.0.0", author="dev@example.com")
async def enter(request: Request, inputs: dict):
    error = InputsError()
    if not inputs.get("name"):
        error.add(name="Please give a name")
    if error:
        raise error
    return Launch(request, "hello.app:run", inputs=inputs)


@ray.remote
def shout(text):
    return text.upper() + "!"


async def run(inputs: dict, tracer: Tracer):
    await tracer.markdown(f"# Hello {inputs['name']}")
    await tracer.html("<b>bold</b>")
    await tracer.text("plain")
    await tracer.debug("greeting")
    await tracer.action({"step": "greet"})
    print("printed by the flow")
    name = inputs["name"]
    greeting = ray.get(shout.remote(name)) if inputs["loud"] else name
    return {"greeting": greeting, "tone": inputs["tone"], "times": inputs["times"]}


def sync_run(inputs, tracer):
    tracer.debug_sync("in a thread")
    tracer.result_sync(["a", 1])
    return "done"


def fails(inputs: dict):
    return 1 / 0


@app.enter("/approve", model=F.Model(F.InputText(label="Item", name="item"), F.Submit("Ask")),
           summary="Approval")
async def ask(request: Request, inputs: dict):
    return Launch(request, approval, inputs=inputs)


@app.lock("approve")
async def approve_form(data: dict):
    return F.Model(
        F.Markdown(f"Approve {data['item']}?"),
        F.Checkbox(label="Approve", name="ok"),
        F.InputText(label="Reason", name="reason"),
        F.Submit("OK"),
    )


@app.lease("approve")
async def approve_check(inputs: dict, data: dict):
    if not inputs.get("reason"):
        raise InputsError(reason="Give a reason")
    return {"approved": inputs["ok"], "reason": inputs["reason"], "item": data["item"]}


async def approval(inputs: dict, tracer: Tracer):
    print("before the lock")
    return await tracer.lock("approve", data={"item": inputs["item"]}, timeout=60)


async def expires(inputs: dict, tracer: Tracer):
    return await tracer.lock("late", data={"item": "late"}, timeout=1)


@serve.deployment
@serve.ingress(app)
class Hello:
    pass


fast_app = Hello.bind()
