"""The guidance reports the truncation nodes send to the browser, read in tests.

``browser_events`` (a fixture; conftest.py registers this module for every test module, which asks for it
with ``pytest.mark.usefixtures("browser_events")``) makes the harness's server stand in for ComfyUI's, so the
events sent to the browser land in the run's ``messages``; :func:`reports` reads a node's reports there.
"""

from __future__ import annotations

import pytest

EVENT = "shapefirst.guidance"


@pytest.fixture
def browser_events(comfy, monkeypatch):
    """The harness's server stands in for ComfyUI's, so the events sent to the browser land in r.messages."""
    import server

    monkeypatch.setattr(server.PromptServer, "instance", comfy.server, raising=False)


def reports(r, node):
    """The guidance reports ``node`` sent during the run ``r``."""
    return [d["report"] for e, d in r.messages if e == EVENT and d["node"] == node]
