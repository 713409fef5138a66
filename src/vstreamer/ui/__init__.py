"""The web chat: a Chainlit app over the dialogue engine (``vstreamer ui``).

The Chainlit app module (:mod:`vstreamer.ui.app`) is a thin adapter: personas become chat profiles, every
reply comes from :meth:`vstreamer.engine.DialogueEngine.reply`, and history lives in the project's store through
:class:`vstreamer.ui.datalayer.StoreDataLayer`. Chainlit is an optional dependency (the ``ui`` extra); nothing
here imports it at package import time.
"""

from vstreamer.ui.options import UIOptions

__all__ = ["UIOptions"]
