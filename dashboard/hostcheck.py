"""The dashboard's Host check against DNS rebinding: which Host headers it answers.

Reads env GANDISSECT_ALLOWED_HOSTS; writes nothing; imports neither streamlit nor torch (the ASGI
middleware in `dashboard/serve.py` and the in-app check in `dashboard/app.py` both use it). A page of
another site that rebinds its own name to 127.0.0.1 still sends its own name as Host, so only loopback
names and addresses, and configured names, are answered.

    python -c "from dashboard.hostcheck import host_allowed; print(host_allowed('evil.example:8501'))"
"""
from __future__ import annotations

import ipaddress
import os
from typing import Iterable

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def host_name(host_header: str) -> str:
    """The name of a Host header, without its port: "[::1]:8501" -> "::1", "a.b:80" -> "a.b"."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def allowed_hosts() -> tuple[str, ...]:
    """Extra Host names the dashboard answers: $GANDISSECT_ALLOWED_HOSTS (comma-separated; the CLI adds
    the --host it binds to when that is a specific address)."""
    return tuple(h.strip().lower() for h in os.environ.get("GANDISSECT_ALLOWED_HOSTS", "").split(",") if h.strip())


def host_allowed(host_header: str | None, extra: Iterable[str] = ()) -> bool:
    """Whether a request's Host is a loopback name or address, or a configured one. A page of another
    site that rebinds its own name to 127.0.0.1 sends its own name as Host, so it is refused."""
    if not host_header:
        return False
    name = host_name(host_header)
    if name in LOOPBACK_NAMES or name.endswith(".localhost") or name in {h.lower() for h in extra}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
