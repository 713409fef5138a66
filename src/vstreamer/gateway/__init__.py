"""The HTTP gateway: OpenAI-compatible API, REST, metrics (``vstreamer serve``)."""

from vstreamer.gateway.app import create_app

__all__ = ["create_app"]
