"""The admin HTTP endpoint (gateway/admin/http.py) against real clients: curl, and raw sockets
for what curl will not send (garbage, nothing, a request dribbled out, too many connections)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.admin.http import HttpEndpoint
from gateway.config import ConfigError, parse_config
from tests.unit.test_config import minimal

pytestmark = pytest.mark.timeout(60)

BODY = b"# HELP demo_total A demo\n# TYPE demo_total counter\ndemo_total 3.0\n"


async def _metrics():
    return 200, "text/plain; version=0.0.4; charset=utf-8", BODY


async def _broken():
    raise RuntimeError("secret detail that must not reach the client")


async def _slow():
    await asyncio.sleep(30)
    return 200, "text/plain", b"late"


async def _endpoint(**limits) -> HttpEndpoint:
    ep = HttpEndpoint("127.0.0.1", 0, {"/metrics": _metrics, "/broken": _broken, "/slow": _slow}, **limits)
    await ep.start()
    return ep


async def _curl(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "--max-time", "10", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out, err


async def _raw(port: int, data: bytes = b"", *, wait_s: float = 10) -> bytes:
    """Send ``data`` on a plain connection and read everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    try:
        async with asyncio.timeout(wait_s):
            return await reader.read()
    finally:
        writer.close()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_get_serves_the_route_and_closes():
    ep = await _endpoint()
    try:
        url = f"http://127.0.0.1:{ep.bound_port()}/metrics"
        rc, out, err = await _curl("-i", url)
        assert rc == 0, err
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert b"Content-Length: %d" % len(BODY) in head and b"Connection: close" in head
        assert body == BODY
        rc, out, _ = await _curl(url + "?format=text")  # the query string is ignored
        assert rc == 0 and out == BODY
    finally:
        await ep.stop()
    assert ep.bound_port() is None


async def test_head_has_the_headers_and_no_body():
    ep = await _endpoint()
    try:
        response = await _raw(ep.bound_port(), b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(response) == 200
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"Content-Length: %d" % len(BODY) in head
        assert body == b""
        rc, out, err = await _curl("-I", f"http://127.0.0.1:{ep.bound_port()}/metrics")  # curl's HEAD
        assert rc == 0, err
        assert out.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % len(BODY) in out
    finally:
        await ep.stop()


async def test_unknown_path_404_and_other_methods_405():
    ep = await _endpoint()
    base = f"http://127.0.0.1:{ep.bound_port()}"
    try:
        rc, out, _ = await _curl("-i", base + "/nothing-here")
        assert rc == 0 and out.startswith(b"HTTP/1.1 404 Not Found")
        rc, out, _ = await _curl("-i", "-X", "POST", "--data", "x=1", base + "/metrics")
        assert rc == 0 and out.startswith(b"HTTP/1.1 405 Method Not Allowed")
        assert b"Allow: GET, HEAD" in out
        rc, out, _ = await _curl("-i", "-X", "DELETE", base + "/metrics")
        assert rc == 0 and out.startswith(b"HTTP/1.1 405")
        # a body announced on a GET is not read, and does not stop the answer
        rc, out, _ = await _curl("-i", "-X", "GET", "--data-binary", "y" * 100_000, base + "/metrics")
        assert rc == 0 and out.startswith(b"HTTP/1.1 200") and out.endswith(BODY)
    finally:
        await ep.stop()


async def test_garbage_and_oversized_requests_are_refused():
    ep = await _endpoint(max_request_bytes=1024)
    port = ep.bound_port()
    try:
        assert _status(await _raw(port, b"\x16\x03\x01\x02\x00 this is TLS, not HTTP\r\n\r\n")) == 400
        assert _status(await _raw(port, b"GET\r\n\r\n")) == 400
        assert _status(await _raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 5000 + b"\r\n\r\n")) == 431
        # still serving
        rc, out, _ = await _curl(f"http://127.0.0.1:{port}/metrics")
        assert rc == 0 and out == BODY
    finally:
        await ep.stop()


async def test_silent_and_dribbling_clients_are_cut_off_at_the_read_deadline():
    ep = await _endpoint(read_timeout_s=0.5)
    port = ep.bound_port()
    try:
        started = time.monotonic()
        response = await _raw(port)  # sends nothing
        assert _status(response) == 408
        assert time.monotonic() - started < 5

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answered = asyncio.ensure_future(reader.read())  # everything until the server closes
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        sent = 0
        try:
            while sent < len(request) and not answered.done():  # one octet every 0.1 s: 3.5 s in all
                writer.write(request[sent:sent + 1])
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass
        answer = await asyncio.wait_for(answered, 5)
        writer.close()
        assert sent < len(request)  # cut off before the request was complete
        assert _status(answer) == 408
        # a client closing without a word gets nothing, and costs nothing
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        rc, out, _ = await _curl(f"http://127.0.0.1:{port}/metrics")
        assert rc == 0 and out == BODY
    finally:
        await ep.stop()


async def test_connection_cap():
    ep = await _endpoint(max_connections=2, read_timeout_s=2)
    port = ep.bound_port()
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.2)  # both accepted and waiting for their request
        assert _status(await _raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
        for reader, writer in held:
            writer.close()
        await asyncio.sleep(0.3)
        rc, out, _ = await _curl(f"http://127.0.0.1:{port}/metrics")
        assert rc == 0 and out == BODY
    finally:
        await ep.stop()


async def test_a_failing_or_slow_route_is_answered_without_details():
    ep = await _endpoint(route_timeout_s=0.3)
    base = f"http://127.0.0.1:{ep.bound_port()}"
    try:
        rc, out, _ = await _curl("-i", base + "/broken")
        assert rc == 0 and out.startswith(b"HTTP/1.1 500")
        assert b"secret detail" not in out
        rc, out, _ = await _curl("-i", base + "/slow")
        assert rc == 0 and out.startswith(b"HTTP/1.1 503")
    finally:
        await ep.stop()


async def test_stop_ends_open_connections_and_routes_added_later_are_served():
    routes = {}
    ep = HttpEndpoint("127.0.0.1", 0, routes, read_timeout_s=30)
    await ep.start()
    port = ep.bound_port()
    routes["/metrics"] = _metrics  # added after the endpoint was built (as /healthz is by the gateway)
    rc, out, _ = await _curl(f"http://127.0.0.1:{port}/metrics")
    assert rc == 0 and out == BODY
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # silent, would wait 30 s
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await ep.stop()
    assert time.monotonic() - started < 5
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# -- [admin] http_listen ------------------------------------------------------------------------
def test_http_listen_defaults_to_loopback_9925_and_can_be_turned_off(tmp_path):
    cfg = parse_config(minimal(), tmp_path / "gw.toml").admin
    assert (cfg.http_host, cfg.http_port) == ("127.0.0.1", 9925)
    cfg = parse_config(minimal(admin={"http_listen": "[::1]:0"}), tmp_path / "gw.toml").admin
    assert (cfg.http_host, cfg.http_port) == ("::1", 0)
    cfg = parse_config(minimal(admin={"http_listen": ""}), tmp_path / "gw.toml").admin
    assert (cfg.http_host, cfg.http_port) == (None, None)


@pytest.mark.parametrize("listen, message", [
    ("0.0.0.0:9925", "0.0.0.0 is not a loopback address"),
    (":9925", "0.0.0.0 is not a loopback address"),  # an empty host means every address
    ("192.0.2.7:9925", "192.0.2.7 is not a loopback address"),
    ("9925", "'9925' is not host:port"),
])
def test_http_listen_stays_on_loopback(tmp_path, listen, message):
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(admin={"http_listen": listen}), tmp_path / "gw.toml")
    assert info.value.key == "admin.http_listen" and message in str(info.value)
