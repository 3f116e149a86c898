"""Run a truncation sweep (Table 2 for your own model and prompts) on one or many ComfyUI servers.

Each (prompt, window) becomes one API-format graph built from core nodes and the pack's
TruncatedCFGSampler, queued over ComfyUI's own HTTP API (POST /prompt). One task per server
first runs a short warm-up graph there (model loading and first-call costs stay out of the
timings), then keeps that server's queue a little ahead of its work and listens to its
websocket; the sampling time of a job is the time between the sampler node starting and the next
node starting (both announced on the websocket), so text encoding, model loading and VAE decoding
are not counted. Every window of a prompt runs on one server, so each image is timed against its
a = 0 twin there. The sampler's accounting comes from /history, the image from /view. A server
that stops answering has its unfinished jobs handed to the others. Every finished job is appended
to results.jsonl at once, so an interrupted sweep resumes where it stopped; an interrupt (Ctrl-C)
takes this sweep's queued and running jobs off every server on the way out.

The pure parts (prompt files, windows, the work queue) are in shapefirst/sweep.py, the table in
shapefirst/sweep_table.py; the metrics in devtools/sweep_metrics.py; the command line in
devtools/sweep_cli.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shapefirst import sweep as pure

from .sweep_server import SAMPLER, Server, SweepError

LOG = logging.getLogger("shapefirst.sweep")
SAMPLER_ID, DECODE_ID, SAVE_ID = "5", "6", "7"
WARM_UP_STEPS = 3  # two guided steps and one without the text pass: both batch shapes run once

__all__ = ["Settings", "Sweep", "SweepError", "build_graph", "warm_up_graph"]


@dataclass
class Settings:
    checkpoint: str
    sampler: str = "euler"
    scheduler: str = "normal"
    steps: int = 20
    cfg: float = 7.5
    width: int = 512
    height: int = 512
    tail: str = "uncond"
    negative: str = ""

    def config(self, windows: list[pure.Window], prompts: list[pure.PromptItem]) -> dict:
        """What a results file must match to be resumed."""
        return {**asdict(self), "windows": [w.label for w in windows],
                "prompts": [[p.text, p.seed] for p in prompts]}


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key.replace("=", "-").replace("%", "pct")).strip("_")[:80]


def build_graph(job: pure.Job, s: Settings) -> dict:
    """API-format graph: checkpoint, prompt and empty negative, TruncatedCFGSampler, decode, save."""
    w = job.window
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": s.checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": job.prompt.text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": s.negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": s.width, "height": s.height, "batch_size": 1}},
        SAMPLER_ID: {"class_type": SAMPLER, "inputs": {
            "model": ["1", 0], "seed": job.prompt.seed, "steps": s.steps, "cfg": s.cfg, "sampler_name": s.sampler,
            "scheduler": s.scheduler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0, "guidance_start": 0.0, "guidance_end": w.end, "tail": s.tail, "window": w.mode,
            "adaptive_threshold": w.threshold}},
        DECODE_ID: {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER_ID, 0], "vae": ["1", 2]}},
        SAVE_ID: {"class_type": "SaveImage", "inputs": {"images": [DECODE_ID, 0],
                                                         "filename_prefix": f"shapefirst_sweep/{safe_name(job.key)}"}},
    }


def warm_up_graph(job: pure.Job, s: Settings) -> dict:
    """The job's graph at WARM_UP_STEPS steps (guided, then one without the text pass), previewed
    instead of saved: it loads the model and runs both batch shapes once before anything is timed."""
    graph = build_graph(job, s)
    steps = min(s.steps, WARM_UP_STEPS)
    graph[SAMPLER_ID]["inputs"].update(steps=steps, guidance_end=(steps - 1) / steps if steps > 1 else 1.0,
                                       window="fixed")
    graph[SAVE_ID] = {"class_type": "PreviewImage", "inputs": {"images": [DECODE_ID, 0]}}
    return graph


@dataclass
class _Flight:
    job: pure.Job | None  # None: the warm-up
    started: dict = field(default_factory=dict)  # node id -> time its "executing" message arrived


class Sweep:
    """One sweep: jobs, servers, the results file. ``run()`` returns the records of every job;
    ``notes`` says afterwards what makes this run's timings less comparable."""

    def __init__(self, settings: Settings, prompts, windows, urls: list[str], out_dir: Path, depth: int = 2,
                 on_record=None):
        self.s, self.prompts, self.windows = settings, prompts, windows
        self.servers = [Server(u) for u in urls]
        self.out = Path(out_dir)
        self.results = self.out / "results.jsonl"
        self.images = self.out / "images"
        self.depth, self.on_record = depth, on_record
        self.config = settings.config(windows, prompts)
        self.jobs = pure.build_jobs(prompts, windows)
        self.session = uuid.uuid4().hex[:12]  # records of one run share it: timings compare within a run
        self.queued = 0  # graphs POSTed in this session (warm-ups not counted)
        self.failed: list[dict] = []
        self.notes: list[str] = []
        self._flights: dict[str, dict[str, _Flight]] = {}  # server url -> prompt id -> job there

    def run(self) -> dict[str, dict]:
        return asyncio.run(self._run())

    async def _run(self) -> dict[str, dict]:
        import aiohttp

        records = pure.load_results(self.results, self.config)
        async with aiohttp.ClientSession() as http:
            for server in self.servers:
                await server.check(http, self.s.checkpoint, self.s.sampler, self.s.scheduler)
            todo = [j for j in self.jobs if j.key not in records]
            LOG.info("sweep: %d images, %d already in %s, %d to make on %d server(s)", len(self.jobs),
                     len(self.jobs) - len(todo), self.results, len(todo), len(self.servers))
            self._shared_cpu_note()
            if not todo:
                return records
            self.images.mkdir(parents=True, exist_ok=True)
            pure.drop_torn_tail(self.results)
            if not self.results.exists():
                self.results.write_text(pure.record_line({"sweep": self.config}), encoding="utf-8")
            self.work = pure.WorkQueue(self.jobs, set(records))
            self.progress = pure.Progress(len(self.jobs), len(self.jobs) - len(todo))
            self._records = records
            tasks = [asyncio.ensure_future(self._serve(http, srv, todo[0])) for srv in self.servers]
            try:
                await asyncio.gather(*tasks)
            except BaseException:  # Ctrl-C, SIGTERM, or a server refusing a graph: nothing of ours stays queued
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._cancel_everywhere()
                raise
        if not self.work.finished:
            raise SweepError(f"every server dropped out with {len(self.work.pending) + len(self.work.in_flight)} "
                             f"images left; start the servers again and rerun the same command to resume")
        return records

    def _shared_cpu_note(self) -> None:
        by_host: dict[str, list[Server]] = {}
        for srv in self.servers:
            if srv.device == "cpu":
                by_host.setdefault(srv.host, []).append(srv)
        for host, group in by_host.items():
            if len(group) > 1:
                self.notes.append(f"{len(group)} servers on {host} compute on its CPU and share its cores: each one's "
                                  "times depend on what the others run at that moment, so saved latency is noisier "
                                  "than with one server per GPU")

    async def _cancel_everywhere(self) -> None:
        """This sweep's queued and running jobs off every server still answering (a fresh session:
        the run's own may be closing)."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            targets = [(srv, list(self._flights.get(srv.url, {}))) for srv in self.servers if not srv.dropped]
            results = await asyncio.gather(*(srv.cancel(http, pids) for srv, pids in targets), return_exceptions=True)
        for (srv, pids), res in zip(targets, results):
            if isinstance(res, BaseException):
                LOG.warning("sweep: could not cancel %d job(s) on %s (%s)", len(pids), srv.url, res)
            elif sum(res):
                LOG.info("sweep: cancelled %d queued and %d running job(s) on %s", res[0], res[1], srv.url)

    async def _serve(self, http, srv: Server, first: pure.Job) -> None:
        flights = self._flights.setdefault(srv.url, {})
        try:
            async with http.ws_connect(f"{srv.url}/ws?clientId={srv.client_id}", heartbeat=10) as ws:
                await self._warm_up(http, srv, ws, flights, first)
                while not self.work.finished:
                    while len(flights) < self.depth and (job := self.work.take(srv.url)) is not None:
                        try:
                            pid = await srv.queue(http, build_graph(job, self.s))
                        except SweepError:
                            self.work.give_back(job, srv.url)
                            raise
                        self.queued += 1
                        flights[pid] = _Flight(job)
                    if not flights:
                        await asyncio.sleep(0.2)  # others may still hand work back
                        continue
                    msg = await self._receive(ws, srv)
                    if msg is not None:
                        await self._message(http, srv, flights, msg)
        except SweepError:
            raise
        except Exception as exc:  # the server is gone: its unfinished jobs go to the others
            srv.dropped = True
            flights.clear()
            lost = self.work.drop(srv.url)
            LOG.warning("sweep: %s dropped out (%s: %s); %d unfinished image(s) handed to the other servers",
                        srv.url, type(exc).__name__, exc, len(lost))
            if any(not s.dropped for s in self.servers):
                self.notes.append(f"{srv.url} dropped out after {srv.done} image(s): servers sharing a machine with "
                                  "it ran under another load from then on, and its prompts' remaining windows ran "
                                  "elsewhere, without their a = 0 twin")

    async def _receive(self, ws, srv: Server) -> dict | None:
        """The next JSON message of the server's websocket, None after a quiet second or a preview."""
        import aiohttp

        try:
            msg = await ws.receive(timeout=1.0)
        except asyncio.TimeoutError:
            return None
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR):
            raise ConnectionError(f"websocket of {srv.url} closed")
        return json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None

    async def _warm_up(self, http, srv: Server, ws, flights: dict, first: pure.Job) -> None:
        pid = await srv.queue(http, warm_up_graph(first, self.s))
        flights[pid] = _Flight(None)
        t0 = time.perf_counter()
        while True:
            msg = await self._receive(ws, srv)
            data = (msg or {}).get("data") or {}
            if data.get("prompt_id") != pid:
                continue
            if msg.get("type") == "execution_error":
                raise SweepError(f"the warm-up graph failed on {srv.url}: {data.get('exception_message')}")
            if msg.get("type") in ("execution_success", "execution_interrupted"):
                break
        del flights[pid]
        LOG.info("sweep: %s warmed up in %.1fs (model loaded, both sampling paths run once)", srv.url,
                 time.perf_counter() - t0)

    async def _message(self, http, srv: Server, flights: dict, msg: dict) -> None:
        data = msg.get("data") or {}
        flight = flights.get(data.get("prompt_id"))
        if flight is None or flight.job is None:
            return
        kind = msg.get("type")
        if kind == "executing" and data.get("node") is not None:
            flight.started.setdefault(str(data["node"]), time.perf_counter())
        elif kind in ("execution_error", "execution_interrupted"):
            del flights[data["prompt_id"]]
            self.work.complete(flight.job, srv.url)
            error = data.get("exception_message") or "interrupted on the server"
            self.failed.append({"key": flight.job.key, "error": error})
            LOG.error("sweep: %s failed on %s: %s", flight.job.key, srv.url, error)
        elif kind == "execution_success":
            del flights[data["prompt_id"]]
            record = await self._collect(http, srv, flight, data["prompt_id"])
            if self.work.complete(flight.job, srv.url):
                with open(self.results, "a", encoding="utf-8") as f:
                    f.write(pure.record_line(record))
                self._records[record["key"]] = record
                srv.done += 1
                LOG.info("sweep: %s (%s)", self.progress.step(), srv.url)
                if self.on_record:
                    self.on_record(record, srv)

    async def _collect(self, http, srv: Server, flight: _Flight, pid: str) -> dict:
        for _ in range(300):  # the websocket may announce success before the history entry is stored
            hist = (await srv.get_json(http, f"/history/{pid}")).get(pid)
            if hist is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise ConnectionError(f"{srv.url} never stored the history of prompt {pid}")
        outputs = hist["outputs"]
        report = dict((outputs.get(SAMPLER_ID) or {}).get("shapefirst_guidance", [{}])[0])
        report.pop("curve", None)
        t = flight.started
        seconds = t[DECODE_ID] - t[SAMPLER_ID] if SAMPLER_ID in t and DECODE_ID in t else None
        job = flight.job
        name = f"{safe_name(job.key)}.png"
        (self.images / name).write_bytes(await srv.image(http, outputs[SAVE_ID]["images"][0]))
        return {"key": job.key, "prompt_index": job.prompt.index, "prompt": job.prompt.text, "seed": job.prompt.seed,
                "window": job.window.label, "a": job.window.a, "guidance_end": job.window.end,
                "window_mode": job.window.mode, "seconds": seconds, "server": srv.url, "session": self.session,
                "image": f"images/{name}",
                **{k: report.get(k) for k in ("steps", "evaluations", "guided_evaluations", "skipped_passes",
                                              "saved_fraction", "stop_step")}}
