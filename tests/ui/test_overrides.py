"""The settings panel's values as sampling overrides (whatever the socket message carries)."""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from vstreamer.engine import SamplingOverrides
from vstreamer.ui import state as ui_state

pytest.importorskip("chainlit", reason="the web UI needs Chainlit")

_configured = ui_state._STATE
with warnings.catch_warnings():
    # The app imports Chainlit's server, whose models still use pydantic's deprecated class-based config.
    warnings.simplefilter("ignore", DeprecationWarning)
    _overrides: Callable[[dict[str, Any]], SamplingOverrides] = importlib.import_module(
        "vstreamer.ui.app"
    )._overrides
ui_state._STATE = _configured  # the app made one from the environment: other tests configure their own


def test_slider_values_pass_through() -> None:
    assert _overrides({"temperature": 0.8, "top_p": 0.5, "max_tokens": 200}) == SamplingOverrides(
        temperature=0.8, top_p=0.5, max_tokens=200
    )
    assert _overrides({}) == SamplingOverrides()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "7", None, [1]])
def test_what_is_no_finite_number_keeps_the_default(bad: object) -> None:
    values = {"temperature": bad, "top_p": bad, "max_tokens": bad}
    assert _overrides(values) == SamplingOverrides()


def test_values_are_held_to_the_slider_ranges() -> None:
    held = _overrides({"temperature": 9, "top_p": 0.0, "max_tokens": -40})
    assert held == SamplingOverrides(temperature=2.0, top_p=0.05, max_tokens=1)
    held = _overrides({"temperature": -1.5, "top_p": 7, "max_tokens": 10**400})
    assert held == SamplingOverrides(
        temperature=0.0, top_p=1.0, max_tokens=2**31
    )  # the engine caps it at its budget
    assert isinstance(_overrides({"temperature": 1}).temperature, float)
