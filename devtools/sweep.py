"""Run a truncation sweep (Table 2 for your own model and prompts) on one or many ComfyUI servers.

Each (prompt, window) becomes one API-format graph built from core nodes and the pack's
TruncatedCFGSampler, queued over ComfyUI's own HTTP API (POST /prompt). One task per server
keeps that server's queue a little ahead of its work and listens to its websocket; the
sampling time of a job is the time between the sampler node starting and the next node
starting (both announced on the websocket), so text encoding, model loading and VAE decoding
are not counted. The sampler's accounting comes from /history, the image from /view. A server
that stops answering has its unfinished jobs handed to the others. Every finished job is
appended to results.jsonl at once, so an interrupted sweep resumes where it stopped.

The pure parts (prompt files, windows, the work queue, the table) are in shapefirst/sweep.py;
the metrics that need models in devtools/sweep_metrics.py.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shapefirst import sweep as pure

LOG = logging.getLogger("shapefirst.sweep")
SAMPLER = "TruncatedCFGSampler"
SAMPLER_ID, DECODE_ID, SAVE_ID = "5", "6", "7"


class SweepError(RuntimeError):
    """The sweep cannot start or go on; the message says what to change."""


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
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key.replace("=", "-")).strip("_")[:80]


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
    """One ComfyUI server over HTTP (aiohttp, which ComfyUI itself requires)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.done = 0
        self.dropped = False

    async def get_json(self, http, path: str, timeout: float = 30):
        import aiohttp

        async with http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            r.raise_for_status()
            return await r.json()

    async def check(self, http, s: Settings) -> None:
        """Everything a graph needs, before anything is queued."""
        try:
            await self.get_json(http, "/system_stats", timeout=10)
        except Exception as exc:
            raise SweepError(f"ComfyUI at {self.url} does not answer ({type(exc).__name__}: {exc}). Start it "
                             "there (python main.py --listen 127.0.0.1 --port PORT) or leave that --server out.")
        info = {}
        for node in ("CheckpointLoaderSimple", SAMPLER):
            info.update(await self.get_json(http, f"/object_info/{node}"))
        if SAMPLER not in info:
            raise SweepError(f"ComfyUI at {self.url} has no {SAMPLER} node: install the ShapeFirst pack in its "
                             "custom_nodes folder and restart it.")
        for what, value, node, name, fix in (
                ("checkpoint", s.checkpoint, "CheckpointLoaderSimple", "ckpt_name",
                 "Put the file in that server's models/checkpoints and restart it, or fix --checkpoint."),
                ("sampler", s.sampler, SAMPLER, "sampler_name", "Fix --sampler."),
                ("scheduler", s.scheduler, SAMPLER, "scheduler", "Fix --scheduler.")):
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


@dataclass
class _Flight:
    job: pure.Job
    started: dict = field(default_factory=dict)  # node id -> time its "executing" message arrived


class Sweep:
    """One sweep: jobs, servers, the results file. ``run()`` returns the records of every job."""

    def __init__(self, settings: Settings, prompts, windows, urls: list[str], out_dir: Path, depth: int = 2,
                 drop_after: float = 5.0, on_record=None):
        self.s, self.prompts, self.windows = settings, prompts, windows
        self.servers = [Server(u) for u in urls]
        self.out = Path(out_dir)
        self.results = self.out / "results.jsonl"
        self.images = self.out / "images"
        self.depth, self.drop_after, self.on_record = depth, drop_after, on_record
        self.config = settings.config(windows, prompts)
        self.jobs = pure.build_jobs(prompts, windows)
        self.queued = 0  # graphs POSTed in this session
        self.failed: list[dict] = []

    def run(self) -> dict[str, dict]:
        return asyncio.run(self._run())

    async def _run(self) -> dict[str, dict]:
        import aiohttp

        records = pure.load_results(self.results, self.config)
        async with aiohttp.ClientSession() as http:
            for server in self.servers:
                await server.check(http, self.s)
            todo = [j for j in self.jobs if j.key not in records]
            LOG.info("sweep: %d images, %d already in %s, %d to make on %d server(s)", len(self.jobs),
                     len(self.jobs) - len(todo), self.results, len(todo), len(self.servers))
            if not todo:
                return records
            self.images.mkdir(parents=True, exist_ok=True)
            pure.drop_torn_tail(self.results)
            if not self.results.exists():
                self.results.write_text(pure.record_line({"sweep": self.config}), encoding="utf-8")
            self.work = pure.WorkQueue(self.jobs, set(records))
            self.progress = pure.Progress(len(self.jobs), len(self.jobs) - len(todo))
            self._records = records
            await asyncio.gather(*(self._serve(http, srv) for srv in self.servers))
        if not self.work.finished:
            raise SweepError(f"every server dropped out with {len(self.work.pending) + len(self.work.in_flight)} "
                             f"images left; start the servers again and rerun the same command to resume")
        return records

    async def _serve(self, http, srv: Server) -> None:
        flights: dict[str, _Flight] = {}
        try:
            async with http.ws_connect(f"{srv.url}/ws?clientId={srv.client_id}", heartbeat=10) as ws:
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
                    try:
                        msg = await ws.receive(timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type in (aiohttp_closed_types()):
                        raise ConnectionError(f"websocket of {srv.url} closed")
                    if msg.type.name != "TEXT":
                        continue  # previews
                    await self._message(http, srv, flights, json.loads(msg.data))
        except SweepError:
            raise
        except Exception as exc:  # the server is gone: its unfinished jobs go to the others
            srv.dropped = True
            lost = self.work.drop(srv.url)
            LOG.warning("sweep: %s dropped out (%s: %s); %d unfinished image(s) handed to the other servers",
                        srv.url, type(exc).__name__, exc, len(lost))

    async def _message(self, http, srv: Server, flights: dict, msg: dict) -> None:
        data = msg.get("data") or {}
        flight = flights.get(data.get("prompt_id"))
        if flight is None:
            return
        kind = msg.get("type")
        if kind == "executing" and data.get("node") is not None:
            flight.started.setdefault(str(data["node"]), time.perf_counter())
        elif kind == "execution_error":
            del flights[data["prompt_id"]]
            self.work.complete(flight.job, srv.url)
            self.failed.append({"key": flight.job.key, "error": data.get("exception_message")})
            LOG.error("sweep: %s failed on %s: %s", flight.job.key, srv.url, data.get("exception_message"))
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
                "window_mode": job.window.mode, "seconds": seconds, "server": srv.url, "image": f"images/{name}",
                **{k: report.get(k) for k in ("steps", "evaluations", "guided_evaluations", "skipped_passes",
                                              "saved_fraction", "stop_step")}}


def aiohttp_closed_types():
    import aiohttp

    return (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR)


# -- command line ---------------------------------------------------------------------------
def parse_args(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="sweep.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", required=True, type=Path, help="prompt file: .txt (one per line), .csv or .jsonl "
                                                                  "with 'prompt' and optional 'seed'")
    ap.add_argument("--checkpoint", required=True, help="checkpoint name as the servers list it (embedded server: "
                                                         "a file path, or a name in the runtime's models/checkpoints)")
    ap.add_argument("--windows", nargs="+", default=["a=5", "a=10", "a=15", "a=20"],
                    help="a=N (final N steps without text), end=F (guidance_end fraction), adaptive=T; a=0 is "
                         "always added as the reference")
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--scheduler", default="karras")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--tail", default="uncond", choices=["uncond", "cond"])
    ap.add_argument("--negative", default="", help="negative prompt (the paper's tail uses the empty one)")
    ap.add_argument("--seed", type=int, default=0, help="seed of prompts whose file gives none")
    ap.add_argument("--server", action="append", default=[], metavar="URL",
                    help="a ComfyUI server with the pack (repeat for several GPUs); default: start one here")
    ap.add_argument("--depth", type=int, default=2, help="jobs kept queued per server (default 2)")
    ap.add_argument("--out", type=Path, default=Path("output/sweep"), help="results folder (resumes if it holds one)")
    ap.add_argument("--clip-vision", help="CLIP vision .safetensors for Image-CLIPScore (ComfyUI's CLIPVisionLoader)")
    ap.add_argument("--clip-hf", type=Path, help="local transformers CLIP folder for Text-CLIPScore")
    ap.add_argument("--fid-weights", type=Path, help="Inception weights file for torchmetrics' FID")
    ap.add_argument("--fid-reference", type=Path, help="folder of reference images for FID (default: the a=0 images)")
    return ap.parse_args(argv)


def _embedded_server(checkpoint: str, out: Path):
    """A ComfyUI on a free 127.0.0.1 port with this pack and the checkpoint; returns (server, name)."""
    from devtools import boot
    from devtools import server as comfy_server

    rt = boot.runtime()
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        ckpt = Path(rt.models) / "checkpoints" / checkpoint
    if not ckpt.is_file():
        raise SweepError(f"checkpoint {checkpoint!r} not found: pass its file path with --checkpoint, or --server "
                         "with a running ComfyUI that has it")
    base = comfy_server.prepare_base(out / "server", [ckpt])
    return comfy_server.ComfyServer(rt.python, rt.comfyui, base).start(), ckpt.name


def _harness(out: Path):
    from devtools.harness import ComfyHarness

    return ComfyHarness(out / "metrics-comfy").boot()


def main(argv=None) -> int:
    import sys

    from devtools import sweep_metrics as metrics

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    embedded = None
    try:
        prompts = pure.read_prompt_file(args.prompts, args.seed)
        windows = pure.parse_windows(args.windows, args.steps)
        if args.fid_weights and not args.fid_weights.is_file():
            raise SweepError(f"--fid-weights {args.fid_weights} does not exist; give the Inception weights file "
                             "or leave the option out (FID is then not computed)")
        text_clip = metrics.HFTextClip(args.clip_hf) if args.clip_hf else None
        image_clip = metrics.GraphClipVision(_harness(args.out), args.clip_vision) if args.clip_vision else None
        urls, name = args.server, args.checkpoint
        if not urls:
            embedded, name = _embedded_server(args.checkpoint, args.out)
            urls = [embedded.url]
        s = Settings(name, args.sampler, args.scheduler, args.steps, args.cfg, args.width, args.height, args.tail,
                     args.negative)
        sweep = Sweep(s, prompts, windows, urls, args.out, depth=args.depth)
        records = sweep.run()
    except (pure.SweepInputError, SweepError, FileNotFoundError) as exc:
        LOG.error("sweep: %s", exc)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()
    rows = metrics.score(records, args.out, image_clip, text_clip)
    fid = metrics.fid_per_window(rows, args.out, args.fid_weights, args.fid_reference) if args.fid_weights else {}
    table = metrics.write_summary(rows, windows, args.out, fid)
    sys.stdout.write(pure.table_markdown(table))
    for f in sweep.failed:
        LOG.error("sweep: %s failed: %s (rerun the same command to retry it)", f["key"], f["error"])
    return 1 if sweep.failed else 0
