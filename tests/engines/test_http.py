"""The lean engine HTTP client (`forge.ground.engine_http.LeanHTTP`) against real aiohttp servers and a
raw TCP server: connection reuse, chunked and closing answers, stale keep-alive connections,
timeouts and cancellation that must never hand one request's answer to the next."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from forge.ground.engine_client import EngineClient, EngineRequestError, EngineUnavailableError
from forge.ground.engine_http import HTTPProtocolError, LeanHTTP


async def _serve(app: web.Application, **kw: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, **kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _app(peers: list[Any]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.json() if request.can_read_body else None
        delay = float(request.query.get("sleep", 0))
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"path": request.path, "body": body, "q": request.query.get("n")})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(50):
            await resp.write(json.dumps({"i": i, "pad": "x" * 20_000}).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def closing(request: web.Request) -> web.Response:
        return web.json_response({"bye": True}, headers={"Connection": "close"})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code == 204:
            return web.Response(status=204)
        return web.json_response({"error": {"message": f"answered {code}"}}, status=code)

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/closing", closing)
    app.router.add_post("/status/{code}", status)
    return app


def _run(body: Callable[[LeanHTTP, list[Any]], Awaitable[None]], **runner_kw: Any) -> None:
    """Serve `_app`, hand `body` a LeanHTTP client of it (closed afterwards) and the peers it saw."""

    async def main() -> None:
        peers: list[Any] = []
        runner, url = await _serve(_app(peers), **runner_kw)
        http = LeanHTTP(url)
        try:
            await body(http, peers)
        finally:
            await http.aclose()
            await runner.cleanup()

    asyncio.run(main())


def test_requests_reuse_one_connection_and_get_their_own_answers() -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        for n in range(20):
            status, raw = await http.request("POST", f"/echo?n={n}", json.dumps({"k": n}).encode())
            assert status == 200
            assert json.loads(raw) == {"path": "/echo", "body": {"k": n}, "q": str(n)}
        status, raw = await http.request("GET", "/echo?n=get")
        assert status == 200 and json.loads(raw)["q"] == "get"
        assert http.opened == 1 and len(set(peers)) == 1

    _run(body)


def test_concurrent_requests_open_parallel_connections_then_reuse_them() -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        for _ in range(3):
            answers = await asyncio.gather(
                *(http.request("POST", f"/echo?n={n}&sleep=0.05", b"{}") for n in range(8))
            )
            assert [json.loads(raw)["q"] for _, raw in answers] == [str(n) for n in range(8)]
        assert http.opened == 8

    _run(body)


def test_chunked_answer_is_read_whole() -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        status, raw = await http.request("GET", "/chunked")
        lines = raw.decode().splitlines()
        assert status == 200 and [json.loads(x)["i"] for x in lines] == list(range(50))
        status, raw = await http.request("GET", "/echo?n=after")  # the stream is still in step
        assert json.loads(raw)["q"] == "after" and http.opened == 1

    _run(body)


def test_connection_close_answer_is_not_reused() -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        assert json.loads((await http.request("GET", "/closing"))[1]) == {"bye": True}
        assert json.loads((await http.request("GET", "/echo?n=1"))[1])["q"] == "1"
        assert http.opened == 2

    _run(body)


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        await http.request("POST", "/echo?n=1", b"{}")
        await asyncio.sleep(0.6)  # past the server's keep-alive timeout: it closed the connection
        status, raw = await http.request("POST", "/echo?n=2", b"{}")
        assert status == 200 and json.loads(raw)["q"] == "2"
        assert http.opened == 2 and len(peers) == 2  # sent once, on a fresh connection

    _run(body, keepalive_timeout=0.2)


def test_a_request_the_server_drops_on_a_reused_connection_is_sent_again_once() -> None:
    """The race a keep-alive client must survive: the server closes an idle connection just as a
    request goes out on it, answering nothing. The request is sent again on a fresh connection."""

    async def main() -> None:
        connections = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # a second request on this connection: dropped
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        http = LeanHTTP(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        assert await http.request("GET", "/a", timeout=5) == (200, b"{}")
        assert await http.request("GET", "/b", timeout=5) == (200, b"{}")
        assert http.opened == 2 and len(connections) == 2
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_an_abandoned_request_never_answers_the_next_one(how: str) -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        slow = http.request(
            "POST", "/echo?n=slow&sleep=0.5", b"{}", timeout=0.1 if how == "timeout" else None
        )
        if how == "timeout":
            with pytest.raises(TimeoutError):
                await slow
        else:
            task = asyncio.ensure_future(slow)
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        status, raw = await http.request("POST", "/echo?n=next", b"{}")
        assert json.loads(raw)["q"] == "next"
        await asyncio.sleep(0.6)  # the slow answer, had it been read on a reused stream, would be here
        assert json.loads((await http.request("POST", "/echo?n=last", b"{}"))[1])["q"] == "last"
        assert http.opened == 2

    _run(body)


def _raw_server(answer: bytes, close: bool = True) -> Callable[[], Awaitable[tuple[asyncio.Server, str]]]:
    async def start() -> tuple[asyncio.Server, str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if close:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    return start


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",  # no status line
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nContent-Len",  # closed mid-head
        b"",  # closed without a byte, on a fresh connection
    ],
)
def test_malformed_or_cut_answers_raise_connection_errors(answer: bytes) -> None:
    async def main() -> None:
        server, url = await _raw_server(answer)()
        http = LeanHTTP(url)
        with pytest.raises(ConnectionError):
            await http.request("GET", "/x", timeout=5)
        assert http.opened == 1  # never sent twice
        server.close()

    asyncio.run(main())


def test_protocol_error_type() -> None:
    async def main() -> None:
        server, url = await _raw_server(b"HTTP/1.1 abc\r\n\r\n")()
        with pytest.raises(HTTPProtocolError):
            await LeanHTTP(url).request("GET", "/x", timeout=5)
        server.close()

    asyncio.run(main())


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanHTTP("https://example.com")


def test_engine_client_maps_statuses_and_refusals() -> None:
    async def body(http: LeanHTTP, peers: list[Any]) -> None:
        async with EngineClient(f"http://{http.host}:{http.port}") as c:
            with pytest.raises(EngineRequestError) as err:
                await c._request("POST", "/status/400", {})
            assert err.value.status == 400 and err.value.message == "answered 400"
            with pytest.raises(EngineUnavailableError, match="503"):
                await c._request("POST", "/status/503", {})
            with pytest.raises(EngineUnavailableError, match="timed out|TimeoutError"):
                await c._request("POST", "/echo?sleep=1", {}, timeout=0.1)
            assert (await c._request("POST", "/echo?n=ok", {"a": 1}))["body"] == {"a": 1}
            assert await c._request("POST", "/status/204", {}) is None  # no body, stream still in step
            assert (await c._request("POST", "/echo?n=after", {}))["q"] == "after"

    _run(body)


def test_engine_client_reports_a_down_engine_quickly() -> None:
    async def main() -> None:
        async with EngineClient("http://127.0.0.1:9") as c:  # discard port: nothing listens
            with pytest.raises(EngineUnavailableError, match="unreachable"):
                await c._request("GET", "/health", timeout=5)

    asyncio.run(main())
