"""Kodosumi's `Tracer` on kodo's protocol: the methods Kodosumi's entry
points call, emitting what Kodosumi emits."""
import kodo

from . import serialize


class _Body:
    """`response.Markdown/HTML/Text`: a `{body}` model."""

    def __init__(self, *args):
        self.body = "\n".join(str(a) for a in args)

    def model_dump(self):
        return {"body": self.body}


class Markdown(_Body):
    """Markdown text, as Kodosumi's `response.Markdown`."""


class HTML(_Body):
    """HTML, as Kodosumi's `response.HTML`."""


class Text(_Body):
    """Plain text, as Kodosumi's `response.Text`."""


class Tracer:
    """What an entry point gets as `tracer`: async methods and their
    `*_sync` twins (for code in threads). With the flow's `app`, a lock
    shows the form of the app's `@app.lock(name)` handler."""

    def __init__(self, app=None):
        self._app = app

    def debug_sync(self, message):
        kodo.debug(str(message))

    def result_sync(self, message):
        kodo.result(serialize(message))

    def action_sync(self, message):
        kodo.action(serialize(message))

    def markdown_sync(self, *message):
        kodo.result(serialize(Markdown(*message)))

    def html_sync(self, *message):
        kodo.result(serialize(HTML(*message)))

    def text_sync(self, *message):
        kodo.result(serialize(Text(*message)))

    def warning_sync(self, message):
        kodo.emit("stderr", str(message))

    async def debug(self, message):
        self.debug_sync(message)

    async def result(self, message):
        self.result_sync(message)

    async def action(self, message):
        self.action_sync(message)

    async def markdown(self, *message):
        self.markdown_sync(*message)

    async def html(self, *message):
        self.html_sync(*message)

    async def text(self, *message):
        self.text_sync(*message)

    async def warning(self, message):
        self.warning_sync(message)

    async def _lock_data(self, name, data):
        """The lock's data: `{"form": elements, "data": data}` when the app
        has an `@app.lock(name)` form (its `@app.lease(name)` checks the
        answer when it is given), else `data`."""
        if self._app is None or not hasattr(self._app, "lock_form"):
            return data
        form = await self._app.lock_form(name, data)
        if form is None:
            return data
        return {"form": form.get_model(), "data": data}

    async def lock(self, name, data=None, timeout=None):
        """Asks a person; the answer, or TimeoutError when the lock expires."""
        return await kodo.alock(name, await self._lock_data(name, data), timeout)

    def lock_sync(self, name, data=None, timeout=None):
        import asyncio

        return kodo.lock(name, asyncio.run(self._lock_data(name, data)), timeout)
