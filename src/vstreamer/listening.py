"""The listening socket of a server we start (the gateway, the web UI), bound before anything else starts."""

from __future__ import annotations

import socket

from vstreamer.errors import ConfigError


def listening_socket(host: str, port: int, *, what: str, hint: str) -> socket.socket:
    """A socket bound to ``host:port``: a port in use is a clear error, not a half-announced start. ``what`` names
    the server in that error, ``hint`` says how to choose another port (the flag and the setting: "choose another
    port" alone left a new user looking for how)."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise ConfigError(f"{what} cannot listen on {host}:{port} ({exc.strerror or exc}); {hint}") from None
    return listening
