"""The pure parts of a truncation sweep (the paper's Table 2 for any model and prompt set).

Prompt files, window specs, the job list, the shared work queue that spreads jobs over
several servers (every window of a prompt on one server, so each image is timed against its
a = 0 twin there) and resuming from a results file. The table and its chart are in
sweep_table.py. Nothing here talks to ComfyUI; the HTTP side lives in devtools/sweep.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

REFERENCE = "a=0"  # plain CFG everywhere: the image every other window is compared with


class SweepInputError(ValueError):
    """Bad sweep input; the message says what to change."""


@dataclass(frozen=True)
class PromptItem:
    index: int
    text: str
    seed: int


@dataclass(frozen=True)
class Window:
    label: str  # "a=10", "a=40%", "end=0.6", "adaptive=0.1"
    end: float  # guidance_end fraction (1.0 = plain CFG)
    mode: str = "fixed"
    threshold: float = 0.1
    a: int | None = None  # final steps without text (fixed windows only)
    steps: int | None = None  # the sweep's steps (what a counts against)

    @property
    def effective(self) -> tuple:
        """What the sampler runs: two labels with the same effective window make the same images."""
        return (self.mode, self.a, self.threshold) if self.mode == "fixed" else (self.mode, self.threshold)

    def describe(self) -> str:
        """One line for the log: what the window means in steps."""
        if self.mode == "adaptive":
            return f"{self.label}: guidance until the relative guidance strength falls below {self.threshold:g}"
        if self.a == 0:
            return f"{self.label}: plain CFG on all {self.steps} steps (the reference)"
        return f"{self.label}: the last {self.a} of {self.steps} steps without the text pass"


@dataclass(frozen=True)
class Job:
    prompt: PromptItem
    window: Window

    @property
    def key(self) -> str:
        return f"p{self.prompt.index}|{self.window.label}"


# -- inputs ---------------------------------------------------------------------------------
def parse_prompts(text: str, kind: str = "txt", default_seed: int = 0) -> list[PromptItem]:
    """Prompts from a file's text. ``kind``: 'txt' (one per line, '#' comments), 'csv' (a header
    with 'prompt' and optionally 'seed') or 'jsonl' ({"prompt": ..., "seed": ...} per line).
    A prompt without a seed gets ``default_seed``, so each window sees the same noise."""
    rows: list[tuple[str, object]] = []
    if kind == "txt":
        rows = [(line.strip(), None) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    elif kind == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise SweepInputError("the CSV prompt file needs a header row with a 'prompt' column (and optionally "
                                  f"'seed'); got columns {reader.fieldnames}")
        rows = [((r.get("prompt") or "").strip(), r.get("seed")) for r in reader]
    elif kind == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SweepInputError(f"line {n} of the JSONL prompt file is not JSON ({exc}); write one "
                                      '{"prompt": "...", "seed": 1} object per line') from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise SweepInputError(f'line {n} of the JSONL prompt file needs a "prompt" string')
            rows.append((obj["prompt"].strip(), obj.get("seed")))
    else:
        raise SweepInputError(f"unknown prompt file kind {kind!r}: use a .txt, .csv or .jsonl file")
    items = []
    for text_, seed in rows:
        if not text_:
            continue
        try:
            s = default_seed if seed in (None, "") else int(seed)
        except (TypeError, ValueError):
            raise SweepInputError(f"seed {seed!r} of prompt {text_!r} is not a whole number") from None
        if s < 0:
            raise SweepInputError(f"seed {s} of prompt {text_!r} is negative; seeds are 0 or more")
        items.append(PromptItem(len(items), text_, s))
    if not items:
        raise SweepInputError("the prompt file has no prompts: write one prompt per line (or a CSV with a "
                              "'prompt' column, or JSONL with a \"prompt\" key)")
    return items


def read_prompt_file(path, default_seed: int = 0) -> list[PromptItem]:
    path = Path(path)
    if not path.is_file():
        raise SweepInputError(f"prompt file {path} does not exist; pass --prompts with a .txt/.csv/.jsonl file")
    kind = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "txt")
    return parse_prompts(path.read_text(encoding="utf-8"), kind, default_seed)


def percent_of_steps(percent: Fraction, steps: int) -> int:
    """``percent`` % of ``steps``, rounded to the nearest whole step, halves up (30% of 25 = 7.5 -> 8)."""
    return math.floor(percent * steps / 100 + Fraction(1, 2))


def _percent_window(spec: str, value: str, steps: int) -> Window:
    try:
        pct = Fraction(value.strip()[:-1].strip())
    except (ValueError, ZeroDivisionError):
        pct = None
    if pct is None or not 0 <= pct <= 100:
        raise SweepInputError(f"window {spec!r}: a percentage of the steps from 0% to 100% (a=40% = the last "
                              "40% of the steps without the text pass)")
    a = percent_of_steps(pct, steps)
    if a == 0 and pct > 0:
        least = Fraction(50, steps)
        raise SweepInputError(f"window {spec!r}: {float(pct):g}% of {steps} steps rounds to 0 steps, which is the "
                              f"a=0 reference; give at least {float(least):g}% (or a=1)")
    return Window(f"a={float(pct):g}%", (steps - a) / steps, a=a, steps=steps)


def parse_window(spec: str, steps: int) -> Window:
    """'10' or 'a=10': the last 10 steps without text; 'a=40%': the last 40% of the steps
    (``percent_of_steps``: to the nearest step, halves up); 'end=0.6': guidance_end = 0.6, the
    sampler's round(0.6 * steps) guided steps; 'adaptive=0.1': the adaptive window with that threshold."""
    spec = str(spec).strip()
    name, _, value = spec.partition("=") if "=" in spec else ("a", "", spec)
    name = name.strip().lower()
    if name == "a" and value.strip().endswith("%"):
        return _percent_window(spec, value, steps)
    try:
        v = float(value)
    except ValueError:
        raise SweepInputError(f"window {spec!r} is not understood: write a=10 (final steps without text), a=40% "
                              "(the final 40% of the steps), end=0.6 (guidance_end fraction) or adaptive=0.1 "
                              "(threshold)") from None
    if name == "a":
        if not v.is_integer() or not 0 <= v <= steps:
            raise SweepInputError(f"window {spec!r}: a counts the final steps without text, a whole number "
                                  f"from 0 to steps ({steps}); use end=FRACTION for a fraction")
        a = int(v)
        return Window(f"a={a}", (steps - a) / steps, a=a, steps=steps)
    if name == "end":
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise SweepInputError(f"window {spec!r}: guidance_end must be a fraction in [0, 1] (1 = plain CFG, "
                                  "0.4 = the paper's default)")
        a = steps - int(round(v * steps))  # the sampler's own rounding (guidance.window_steps)
        return Window(f"end={v:g}", v, a=a, steps=steps)
    if name == "adaptive":
        if not (math.isfinite(v) and v > 0):
            raise SweepInputError(f"window {spec!r}: the adaptive threshold must be > 0 (try adaptive=0.1)")
        return Window(f"adaptive={v:g}", 1.0, mode="adaptive", threshold=v, steps=steps)
    raise SweepInputError(f"window {spec!r}: unknown kind {name!r}; use a=, end= or adaptive=")


def parse_windows(specs: list[str], steps: int) -> list[Window]:
    """The windows in order, the reference a = 0 first (added when missing). A window the sampler
    would run like an earlier one (a=10 and a=40% of 25 steps) is dropped: the first label stays."""
    if steps < 1:
        raise SweepInputError(f"steps must be at least 1 (got {steps})")
    out = [Window(REFERENCE, 1.0, a=0, steps=steps)]
    for spec in specs:
        w = parse_window(spec, steps)
        if all(w.effective != o.effective for o in out):
            out.append(w)
    return out


def build_jobs(prompts: list[PromptItem], windows: list[Window]) -> list[Job]:
    """Every (prompt, window) once, prompt by prompt (a prompt's images finish close together)."""
    return [Job(p, w) for p in prompts for w in windows]


# -- distribution ---------------------------------------------------------------------------
class WorkQueue:
    """Jobs shared by several servers. A job is pending, in flight on one server, or done.
    Every window of a prompt runs on the server that took the prompt's first job, so each image
    is timed on the same server as its a = 0 twin, close to it in time; a server with no prompt
    of its own left takes the next unclaimed prompt, or waits. ``drop(server)`` puts a lost
    server's unfinished jobs back in front and frees its prompts for the others. Thread-safe."""

    def __init__(self, jobs: list[Job], done: set[str] = frozenset()):
        self._lock = threading.Lock()
        self.pending = deque(j for j in jobs if j.key not in done)
        self.in_flight: dict[str, tuple[Job, str]] = {}
        self.done: set[str] = {j.key for j in jobs if j.key in done}
        self.owner: dict[int, str] = {}  # prompt index -> the server its windows run on
        self.requeued = 0

    def take(self, server: str) -> Job | None:
        """The next job for ``server``: its own prompts first, then an unclaimed prompt's; None
        when every pending job belongs to another server's prompts."""
        with self._lock:
            mine = next((j for j in self.pending if self.owner.get(j.prompt.index) == server), None)
            job = mine or next((j for j in self.pending if j.prompt.index not in self.owner), None)
            if job is None:
                return None
            self.pending.remove(job)
            self.owner[job.prompt.index] = server
            self.in_flight[job.key] = (job, server)
            return job

    def complete(self, job: Job, server: str) -> bool:
        """Mark done; False (and nothing changes) unless the job is in flight on ``server``."""
        with self._lock:
            entry = self.in_flight.get(job.key)
            if entry is None or entry[1] != server or job.key in self.done:
                return False
            del self.in_flight[job.key]
            self.done.add(job.key)
            return True

    def give_back(self, job: Job, server: str) -> None:
        with self._lock:
            entry = self.in_flight.get(job.key)
            if entry is not None and entry[1] == server:
                del self.in_flight[job.key]
                self.pending.appendleft(job)
                self.requeued += 1

    def drop(self, server: str) -> list[Job]:
        """Return a lost server's unfinished jobs to the front of the queue; its prompts are free."""
        with self._lock:
            lost = [job for job, s in self.in_flight.values() if s == server]
            for job in lost:
                del self.in_flight[job.key]
            self.pending.extendleft(reversed(lost))
            self.owner = {p: s for p, s in self.owner.items() if s != server}
            self.requeued += len(lost)
            return lost

    def in_flight_on(self, server: str) -> list[Job]:
        with self._lock:
            return [job for job, s in self.in_flight.values() if s == server]

    @property
    def finished(self) -> bool:
        with self._lock:
            return not self.pending and not self.in_flight


class Progress:
    """done/total, rate and ETA of the jobs run in this session."""

    def __init__(self, total: int, already: int = 0, clock=time.monotonic):
        self.total, self.already, self.done, self.clock = total, already, already, clock
        self.t0 = clock()

    def step(self) -> str:
        self.done += 1
        return self.line()

    def line(self) -> str:
        new, dt = self.done - self.already, max(self.clock() - self.t0, 1e-9)
        rate = new / dt
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        return f"{self.done}/{self.total} images, {rate * 60:.1f}/min, ETA {eta_s}"


# -- results file ---------------------------------------------------------------------------
def load_results(path, config: dict) -> dict[str, dict]:
    """Records already in a results file (JSONL: a header with the sweep's settings, then one
    record per finished job). A torn last line (an interrupted write) is ignored. Raises when the
    file belongs to a sweep with other settings."""
    path = Path(path)
    if not path.exists():
        return {}
    records: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                continue
            raise SweepInputError(f"{path} line {n + 1} is damaged; remove that line to resume") from None
        if "sweep" in obj:
            if obj["sweep"] != config:
                diff = sorted(k for k in set(config) | set(obj["sweep"]) if config.get(k) != obj["sweep"].get(k))
                raise SweepInputError(f"{path} holds a sweep with other settings ({', '.join(diff)}); pass a "
                                      "new --out folder, or the same settings to resume it")
        elif "key" in obj:
            records.setdefault(obj["key"], obj)
    return records


def drop_torn_tail(path) -> None:
    """Cut an unfinished last line (an interrupted write) so new records start on a fresh line."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def record_line(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True) + "\n"
