"""Shared by the sweep's tier-2 tests: the settings of their tiny runs and ComfyUI's queue and history."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from devtools import sweep as dsweep

STEPS = 4
PROMPTS = "A dog standing on a bench during the day.\na blue bird\n"


def settings(ckpt, **kw):
    return dsweep.Settings(ckpt, sampler="euler", scheduler="normal", steps=STEPS, cfg=7.5, width=64, height=64, **kw)


def history_size(srv) -> int:
    with urllib.request.urlopen(srv.url + "/history", timeout=30) as r:
        return len(json.loads(r.read()))


def result_keys(out: Path) -> list[str]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines if "key" in json.loads(line)]


def wait_history(srv, prompt_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = srv.get_json(f"/history/{prompt_id}")
        if prompt_id in h:
            return h[prompt_id]
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} did not finish")
