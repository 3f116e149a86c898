"""One ComfyUI server as the sweep talks to it: ComfyUI's own HTTP API over aiohttp (which ComfyUI
itself requires). Checks before anything is queued, queueing, images, and cancelling this sweep's
jobs (``POST /queue`` delete for the queued ones, ``POST /interrupt`` with the prompt id for the
running one: other clients' jobs are never touched).
"""

from __future__ import annotations

import difflib
import json
import uuid
from urllib.parse import urlparse

SAMPLER = "TruncatedCFGSampler"


class SweepError(RuntimeError):
    """The sweep cannot start or go on; the message says what to change."""


def _options(info: dict, node: str, name: str) -> list:
    spec = info[node]["input"]["required"][name]
    opts = spec[0]
    if isinstance(opts, str) and len(spec) > 1 and isinstance(spec[1], dict):  # V3: ["COMBO", {"options": [...]}]
        opts = spec[1].get("options", [])
    return list(opts)


def _unknown(what: str, value: str, options: list, url: str, fix: str) -> SweepError:
    near = difflib.get_close_matches(value, [str(o) for o in options], n=3)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return SweepError(f"{what} {value!r} is not known to ComfyUI at {url}.{hint} {fix} "
                      f"(available: {', '.join(map(str, options[:12]))}{' ...' if len(options) > 12 else ''})")


class Server:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.host = urlparse(self.url).hostname or self.url
        self.client_id = uuid.uuid4().hex
        self.done = 0
        self.dropped = False
        self.device = "?"  # the device type the server computes on ("cpu", "cuda", ...), from /system_stats

    async def get_json(self, http, path: str, timeout: float = 30):
        import aiohttp

        async with http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            r.raise_for_status()
            return await r.json()

    async def post(self, http, path: str, data: dict, timeout: float = 10) -> None:
        import aiohttp

        async with http.post(self.url + path, json=data, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            r.raise_for_status()

    async def check(self, http, checkpoint: str, sampler: str, scheduler: str) -> None:
        """Everything a graph needs, before anything is queued."""
        try:
            stats = await self.get_json(http, "/system_stats", timeout=10)
        except Exception as exc:
            raise SweepError(
                f"ComfyUI at {self.url} does not answer ({type(exc).__name__}: {exc}). Start one there with this pack "
                "in its custom_nodes and the checkpoint in its models/checkpoints (python main.py --listen 127.0.0.1 "
                "--port PORT, with --cpu on a machine without a GPU), let the sweep start local ones with "
                "--start-servers N, or leave that --server out.") from None
        devices = stats.get("devices") or [{}]
        self.device = str(devices[0].get("type", "?"))
        info = {}
        for node in ("CheckpointLoaderSimple", SAMPLER):
            info.update(await self.get_json(http, f"/object_info/{node}"))
        if SAMPLER not in info:
            raise SweepError(f"ComfyUI at {self.url} has no {SAMPLER} node: install the ShapeFirst pack in its "
                             "custom_nodes folder and restart it.")
        for what, value, node, name, fix in (
                ("checkpoint", checkpoint, "CheckpointLoaderSimple", "ckpt_name",
                 "Put the file in that server's models/checkpoints and restart it, or fix --checkpoint."),
                ("sampler", sampler, SAMPLER, "sampler_name", "Fix --sampler."),
                ("scheduler", scheduler, SAMPLER, "scheduler", "Fix --scheduler.")):
            opts = _options(info, node, name)
            if value not in opts:
                raise _unknown(what, value, opts, self.url, fix)

    async def queue(self, http, graph: dict) -> str:
        async with http.post(self.url + "/prompt", json={"prompt": graph, "client_id": self.client_id}) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise SweepError(f"ComfyUI at {self.url} refused the graph: {json.dumps(body)[:800]}")
            return body["prompt_id"]

    async def image(self, http, ref: dict) -> bytes:
        params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        async with http.get(self.url + "/view", params=params) as r:
            r.raise_for_status()
            return await r.read()

    async def cancel(self, http, prompt_ids: list[str]) -> tuple[int, int]:
        """Take this sweep's jobs off the server: delete the queued ones, then interrupt the one
        running if it is one of them (ComfyUI interrupts a prompt id only while it runs). Returns
        (queued, running) counts of the jobs that were still there."""
        if not prompt_ids:
            return 0, 0
        before = await self.get_json(http, "/queue", timeout=5)
        pending = {item[1] for item in before.get("queue_pending", [])}
        await self.post(http, "/queue", {"delete": list(prompt_ids)})
        now = await self.get_json(http, "/queue", timeout=5)
        running = [item[1] for item in now.get("queue_running", []) if item[1] in set(prompt_ids)]
        for pid in running:
            await self.post(http, "/interrupt", {"prompt_id": pid})
        return len(pending & set(prompt_ids)), len(running)
