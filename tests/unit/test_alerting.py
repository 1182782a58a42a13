"""Webhook delivery: retried on server errors, given up on a refusal, never raising."""

from __future__ import annotations

import asyncio

from aiohttp import web

from streams.alerting import post_webhook


async def _serve(statuses: list[int]) -> tuple[web.AppRunner, str, list[dict]]:
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=statuses[min(len(received) - 1, len(statuses) - 1)])

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook", received


def test_webhook_retries_server_errors_until_delivered() -> None:
    async def go() -> tuple[bool, list[dict]]:
        runner, url, received = await _serve([503, 500, 200])
        try:
            return await post_webhook(url, {"kind": "data", "state": "open"}, retries=4), received
        finally:
            await runner.cleanup()

    ok, received = asyncio.run(go())
    assert ok and len(received) == 3 and received[-1] == {"kind": "data", "state": "open"}


def test_webhook_gives_up_on_a_client_error_and_on_an_unreachable_url() -> None:
    async def go() -> tuple[bool, int, bool]:
        runner, url, received = await _serve([404])
        try:
            refused = await post_webhook(url, {"x": 1}, retries=3)
        finally:
            await runner.cleanup()
        unreachable = await post_webhook(url, {"x": 1}, retries=1, timeout_s=1)
        return refused, len(received), unreachable

    refused, calls, unreachable = asyncio.run(go())
    assert refused is False and calls == 1, "a 4xx refusal is not retried"
    assert unreachable is False
