"""scripts/sweep.py as a researcher runs it: --help before anything is built, a real Ctrl-C to a real sweep
process (its jobs cancelled on a real ComfyUI server, another client's left alone), servers the sweep starts
itself and stops whatever happens. Tiny random SD1.5, 64 px, few steps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from devtools import sweep as dsweep
from devtools import sweep_cli
from shapefirst import sweep as pure
from sweep_support import PROMPTS, STEPS, result_keys, settings, wait_history

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "sweep.py"


@pytest.fixture(scope="module")
def server(runtime_paths, checkpoints_dir, sd15_ckpt, tmp_path_factory):
    from devtools import server as comfy_server

    base = comfy_server.prepare_base(tmp_path_factory.mktemp("sweep-cli-server"), [checkpoints_dir / sd15_ckpt])
    srv = comfy_server.ComfyServer(Path(sys.executable), runtime_paths["comfyui"], base)
    try:
        yield srv.start()
    finally:
        srv.stop()


def test_help_answers_without_the_runtime_and_shows_defaults(tmp_path):
    """--help before anything is built: an empty runtime folder stays empty, and neither torch nor ComfyUI
    is imported."""
    runtime = tmp_path / "no-runtime"
    runtime.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFYUI_PATH", "COMFYUI_PYTHON", "SHAPEFIRST_COMFYUI_SRC")}
    env["SHAPEFIRST_RUNTIME_DIR"] = str(runtime)
    probe = "\n".join([
        "import os, runpy, sys",
        "sys.argv = [sys.argv[1], '--help']",
        "sys.path.insert(0, os.path.dirname(sys.argv[0]))",
        "try:",
        "    runpy.run_path(sys.argv[0], run_name='__main__')",
        "except SystemExit as e:",
        "    code = e.code",
        "heavy = sorted(m for m in ('torch', 'numpy', 'comfy', 'aiohttp', 'PIL') if m in sys.modules)",
        "print('EXIT', code, 'HEAVY', heavy)"])
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", probe, str(SCRIPT)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    seconds = time.monotonic() - t0
    assert "EXIT 0 HEAVY []" in out.stdout, out.stdout + out.stderr
    assert list(runtime.iterdir()) == []
    for shown in ("--start-servers N", "(default: 25)", "(default: dpmpp_2m)", "(default: a=5 a=10 a=15 a=20)",
                  "a=P%", "halves up", "--clip-vision FILE"):
        assert shown in out.stdout, shown
    print(f"sweep.py --help answered in {seconds:.2f} s")  # measured, not asserted (shared machine)


class _Run:
    """scripts/sweep.py as a user starts it, its stderr read as it comes."""

    def __init__(self, args: list[str], cwd: Path):
        # a terminal's SIGINT disposition, whatever this process inherited: a shell starts background jobs
        # (e.g. a CI step run with &) with SIGINT ignored, and Python then leaves Ctrl-C ignored too
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.err: list[str] = []
        self._reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, "".join(self.err))
            if found:
                return found
            assert self.proc.poll() is None, "".join(self.err)
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n" + "".join(self.err))

    def finish(self, timeout: float = 600) -> tuple[int, str, str]:
        out = self.proc.stdout.read()
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc, out, "".join(self.err)


def _sweep_items(queue: list) -> list[str]:
    """Prompt ids of the sweep's image jobs in a /queue list (its warm-ups preview instead of saving)."""
    return [item[1] for item in queue if (item[2].get("7") or {}).get("inputs", {}).get(
        "filename_prefix", "").startswith("shapefirst_sweep/")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_cancels_this_runs_jobs_only_and_the_same_command_resumes(server, sd15_ckpt, tmp_path):
    srv = server
    (tmp_path / "prompts.txt").write_text("a red cube\na green ball\n")
    args = ["--prompts", str(tmp_path / "prompts.txt"), "--checkpoint", sd15_ckpt, "--server", srv.url,
            "--sampler", "euler", "--scheduler", "normal", "--steps", "16", "--width", "64", "--height", "64",
            "--windows", "a=8", "--out", str(tmp_path / "out")]  # 16 steps: long enough to be caught running
    run = _Run(args, tmp_path)
    deadline = time.monotonic() + 300
    while True:  # the moment one of its jobs runs and another waits behind it
        q = srv.get_json("/queue")
        running, pending = _sweep_items(q["queue_running"]), _sweep_items(q["queue_pending"])
        if running and pending:
            break
        assert time.monotonic() < deadline and run.proc.poll() is None, "".join(run.err)
        time.sleep(0.05)
    graph = dsweep.build_graph(pure.Job(pure.PromptItem(0, "another client's picture", 5),
                                        pure.parse_windows([], 4)[0]), settings(sd15_ckpt))
    graph["7"]["inputs"]["filename_prefix"] = "another_client"
    other = srv.post_json("/prompt", {"prompt": graph, "client_id": "another-client"})["prompt_id"]
    run.proc.send_signal(signal.SIGINT)
    rc, out, err = run.finish(timeout=120)

    assert rc == 130 and err.rstrip().endswith(sweep_cli.INTERRUPTED), err
    assert "Traceback" not in err + out
    assert not _sweep_items(srv.get_json("/queue")["queue_pending"])  # queued jobs deleted before it exited
    assert "cancelled 1 queued and 1 running job(s)" in err
    interrupted = wait_history(srv, running[0])
    assert interrupted["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in interrupted["status"]["messages"])
    assert all(pid not in srv.get_json("/history") for pid in pending)  # never ran
    assert wait_history(srv, other)["status"]["status_str"] == "success"  # the other client's job ran

    rc, out, err = _Run(args, tmp_path).finish()  # the same command again: only what is missing
    assert rc == 0, err
    assert sorted(result_keys(tmp_path / "out")) == sorted(f"p{p}|{w}" for p in range(2) for w in ("a=0", "a=8"))
    assert "| a=8 | 8 | 2 |" in out


def test_start_servers_runs_on_local_servers_and_stops_them(checkpoints_dir, sd15_ckpt, tmp_path):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    out_dir = tmp_path / "out"
    args = ["--prompts", str(tmp_path / "prompts.txt"), "--checkpoint", str(checkpoints_dir / sd15_ckpt),
            "--start-servers", "2", "--sampler", "euler", "--scheduler", "normal", "--steps", str(STEPS),
            "--width", "64", "--height", "64", "--windows", "a=50%", "--out", str(out_dir)]
    rc, out, err = _Run(args, tmp_path).finish()
    assert rc == 0, err
    started = re.findall(r"started ComfyUI at (\S+) \(CPU, \d+ thread\(s\), pid (\d+)", err)
    assert len(started) == 2
    for url, pid in started:
        assert not _alive(int(pid)), f"ComfyUI {pid} still runs"
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/system_stats", timeout=5)
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()[1:]]
    assert len(records) == 4 and {r["server"] for r in records} <= {url for url, _ in started}
    assert {r["window"] for r in records} == {"a=0", "a=50%"} and {r["a"] for r in records} == {0, 2}
    assert f"summary in {(out_dir / 'summary.md').resolve()}" in err
    assert "left out Image-CLIPScore: no --clip-vision given" in err and "| a=50% | 2 | 2 |" in out
    md = (out_dir / "summary.md").read_text()
    assert "## Metrics left out" in md and "FID: no --fid-weights given" in md


def test_sigterm_stops_the_servers_it_started(checkpoints_dir, sd15_ckpt, tmp_path):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    args = ["--prompts", str(tmp_path / "prompts.txt"), "--checkpoint", str(checkpoints_dir / sd15_ckpt),
            "--start-servers", "1", "--sampler", "euler", "--scheduler", "normal", "--steps", "16",
            "--width", "64", "--height", "64", "--windows", "a=8", "--out", str(tmp_path / "out")]
    run = _Run(args, tmp_path)
    pid = int(run.wait_for(r"started ComfyUI at \S+ \(CPU, \d+ thread\(s\), pid (\d+)").group(1))
    run.wait_for(r"warmed up")
    run.proc.send_signal(signal.SIGTERM)
    rc, _, err = run.finish(timeout=120)
    assert rc == 143 and sweep_cli.INTERRUPTED in err and "Traceback" not in err, err
    assert not _alive(pid) and "stopped ComfyUI" in err
