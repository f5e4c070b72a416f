"""Django's ASGI handler, closing each response on the event loop.

Django 5.2's `ASGIHandler.handle` ends every request with
`await sync_to_async(response.close)()`: a hop to the request's own
thread-sensitive executor, which means starting a thread (and another one to
join it) for every request, even one answered by an async view that did no
sync work at all. Profiled under streamed generations that hop was about a
tenth of a worker's CPU.

`response.close()` runs resource closers (file handles) and sends
request_finished; under this server every request_finished receiver is sync
and does not block (`project/asgi_signals.py`: close_caches, reset_urlconf
and the connection housekeeping queued to the request's thread), so the close
runs inline. An async receiver connected later would make Django's sync
`Signal.send` call async_to_sync on the loop, which asgiref refuses: such a
receiver, when present, sends this handler back to Django's thread hop.

The rest of `handle` is Django's own (5.2), unchanged.
"""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix


def _finished_receivers_are_sync() -> bool:
    # Signal.receivers holds (lookup key, receiver or weak reference, is_async) in Django 5.2.
    return not any(entry[2] for entry in signals.request_finished.receivers)


class GatewayASGIHandler(ASGIHandler):
    async def close_response(self, response) -> None:
        if _finished_receivers_are_sync():
            response.close()
        else:
            await sync_to_async(response.close)()

    async def handle(self, scope, receive, send):  # Django 5.2's, but for the two closes
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self.close_response(error_response)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # client disconnected during send_response
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await self.close_response(response)

        body_file.close()
