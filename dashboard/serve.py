"""The dashboard as an ASGI app behind a Host check at the HTTP level (DNS rebinding).

Reads env GANDISSECT_ALLOWED_HOSTS (extra Host names; loopback names and addresses are always
allowed); writes nothing. Every HTTP request and websocket handshake whose Host header is not allowed
is refused before Streamlit sees it: 403 for HTTP (`GET /`, media, uploads, health), a closed handshake
for the websocket. `dashboard/app.py` repeats the check inside every script run (defence in depth, and
for `streamlit run dashboard/app.py` started by hand). `gandissect dashboard` serves this file:

    streamlit run dashboard/serve.py --server.address 127.0.0.1 --server.port 8501
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/serve.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from dashboard.hostcheck import allowed_hosts, host_allowed  # noqa: E402

REFUSAL = b"Refused: this dashboard answers only requests addressed to localhost (DNS rebinding protection).\n"
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class HostCheck:
    """ASGI middleware: refuse requests whose Host is neither loopback nor in GANDISSECT_ALLOWED_HOSTS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if not host_allowed(host, allowed_hosts()):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(REFUSAL)).encode())]})
                await send({"type": "http.response.body", "body": REFUSAL})
                return
        await self.app(scope, receive, send)


app = st.App(str(Path(__file__).with_name("app.py")), middleware=[Middleware(HostCheck)])
