"""Commands whose parts are optional (``pip install 'vstreamer[server]'``): without them, say which extra to install."""

from __future__ import annotations

import importlib.util

from vstreamer.errors import BackendNotInstalled


def require_extra(extra: str, command: str, *modules: str) -> None:
    """Check, without importing them, that the top-level ``modules`` of ``extra`` are installed.

    Without the check a command died of a ModuleNotFoundError traceback that did not say what to install. Not
    importing matters: Chainlit reads its app root when first imported, before the web UI has set it.

    Raises:
        BackendNotInstalled: naming the missing modules and the extra that brings them.
    """
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise BackendNotInstalled(
            f"`vstreamer {command}` needs the {extra} extra ({', '.join(missing)} not installed): "
            f"pip install 'vstreamer[{extra}]'"
        )


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken installation, or a module hidden from imports
        return False
