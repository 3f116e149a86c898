"""The truncation sweep against real ComfyUI servers on 127.0.0.1 (tiny random SD1.5, 64 px, few steps):
two module servers, servers the sweep starts itself, a real Ctrl-C to a real sweep process.

Order matters: the module's last test kills one of the two module servers by its PID.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from devtools import sweep as dsweep
from devtools import sweep_cli, sweep_summary
from devtools import sweep_metrics as metrics
from shapefirst import sweep as pure
from shapefirst import sweep_table

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "sweep.py"
STEPS = 4
PROMPTS = "A dog standing on a bench during the day.\na blue bird\n"


def _l1_only():
    return [(m, m.make(None, None)) for m in metrics.METRICS if m.column.key == "l1"]


@pytest.fixture(scope="module")
def servers(runtime_paths, checkpoints_dir, sd15_ckpt, tmp_path_factory):
    from devtools import server as comfy_server

    started = []
    try:
        for n in range(2):
            base = comfy_server.prepare_base(tmp_path_factory.mktemp(f"sweep-server{n}"), [checkpoints_dir / sd15_ckpt])
            started.append(comfy_server.ComfyServer(Path(sys.executable), runtime_paths["comfyui"], base).start())
        yield started
    finally:
        for srv in started:
            srv.stop()


def _settings(ckpt, **kw):
    return dsweep.Settings(ckpt, sampler="euler", scheduler="normal", steps=STEPS, cfg=7.5, width=64, height=64, **kw)


def _history_size(srv) -> int:
    with urllib.request.urlopen(srv.url + "/history", timeout=30) as r:
        return len(json.loads(r.read()))


def _result_keys(out: Path) -> list[str]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines if "key" in json.loads(line)]


def test_sweep_on_two_servers_is_complete_matches_the_windows_and_resumes(servers, sd15_ckpt, tmp_path, output_dir):
    prompts = pure.parse_prompts(PROMPTS, default_seed=3)
    windows = pure.parse_windows(["a=2", "a=4"], STEPS)
    out = tmp_path / "sweep"
    s = _settings(sd15_ckpt)
    sweep = dsweep.Sweep(s, prompts, windows, [srv.url for srv in servers], out)
    records = sweep.run()

    expected = {f"p{p}|{w}" for p in range(2) for w in ("a=0", "a=2", "a=4")}
    assert set(records) == expected and sorted(_result_keys(out)) == sorted(expected)  # each once
    assert sweep.queued == 6 and sum(srv.done for srv in sweep.servers) == 6  # warm-ups are not images
    for p in range(2):  # every window of a prompt on the server of its a = 0 twin, in this run
        assert len({(r["server"], r["session"]) for r in records.values() if r["prompt_index"] == p}) == 1
    for r in records.values():
        a = int(r["window"].split("=")[1])
        # euler evaluates the model once per step; a final steps skip one of two UNet rows each
        assert (r["steps"], r["evaluations"], r["guided_evaluations"], r["skipped_passes"]) == (STEPS, STEPS, STEPS - a, a)
        assert r["saved_fraction"] == pytest.approx(a / (2 * STEPS))
        assert r["seconds"] > 0 and (out / r["image"]).is_file()

    # a = 0 is plain CFG: the same pixels as core KSampler queued on the same server
    graph = dsweep.build_graph(pure.Job(prompts[0], windows[0]), s)
    graph["5"] = {"class_type": "KSampler", "inputs": {k: v for k, v in graph["5"]["inputs"].items()
                                                       if k not in ("guidance_start", "guidance_end", "tail", "window",
                                                                    "adaptive_threshold")}}
    graph["7"]["inputs"]["filename_prefix"] = "core_ksampler"
    core = servers[0].post_json("/prompt", {"prompt": graph})["prompt_id"]
    hist = _wait_history(servers[0], core)
    ref = hist["outputs"]["7"]["images"][0]
    with urllib.request.urlopen(f"{servers[0].url}/view?filename={ref['filename']}&type=output") as resp:
        (tmp_path / "core.png").write_bytes(resp.read())
    assert pure.l1(metrics.load_image(tmp_path / "core.png"), metrics.load_image(out / records["p0|a=0"]["image"])) == 0

    rows, per_window = metrics.score(records, out, _l1_only())
    assert all(r["l1"] == 0 for r in rows if r["window"] == "a=0")
    table, notes = sweep_summary.write_summary(rows, windows, out, _l1_only(), per_window, notes=sweep.notes)
    assert [r["window"] for r in table] == ["a=0", "a=2", "a=4"] and [r["images"] for r in table] == [2, 2, 2]
    assert [r["timed_pairs"] for r in table] == [2, 2, 2]  # every image has its twin on its server
    assert table[2]["skipped_passes"] == 4 and table[2]["unet_saved"] == pytest.approx(0.5)
    assert any("share its cores" in n for n in notes)  # two CPU servers on one machine: said in the summary
    for name in sweep_summary.FILES:
        assert (out / name).is_file()
        shutil.copy(out / name, output_dir / name)

    # resume: a finished sweep queues nothing; an interrupted one only what is missing
    before = [_history_size(srv) for srv in servers]
    again = dsweep.Sweep(s, prompts, windows, [srv.url for srv in servers], out)
    assert again.run() == records and again.queued == 0
    assert [_history_size(srv) for srv in servers] == before
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-2]) + lines[-2][:20])  # one lost, one torn
    third = dsweep.Sweep(s, prompts, windows, [srv.url for srv in servers], out)
    assert set(third.run()) == expected and third.queued == 2
    assert len(_result_keys(out)) == 6


def _wait_history(srv, prompt_id, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = srv.get_json(f"/history/{prompt_id}")
        if prompt_id in h:
            return h[prompt_id]
        time.sleep(0.2)
    raise AssertionError("the core graph did not finish")


@pytest.mark.parametrize("case", ["unreachable", "checkpoint", "sampler", "empty", "window", "percent"])
def test_bad_input_fails_before_anything_is_queued(case, servers, sd15_ckpt, tmp_path, caplog):
    from devtools import server as comfy_server

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("" if case == "empty" else PROMPTS)
    urls = [servers[0].url] + ([f"http://127.0.0.1:{comfy_server.free_port()}"] if case == "unreachable" else [])
    argv = ["--prompts", str(prompts), "--checkpoint", "nope.safetensors" if case == "checkpoint" else sd15_ckpt,
            "--sampler", "eulr" if case == "sampler" else "euler", "--scheduler", "normal", "--steps", str(STEPS),
            "--width", "64", "--height", "64",
            "--windows", {"window": "end=1.5", "percent": "a=10%"}.get(case, "a=2"),
            "--out", str(tmp_path / "out")] + [x for u in urls for x in ("--server", u)]
    fix = {"unreachable": "--port PORT, with --cpu on a machine without a GPU", "checkpoint": "models/checkpoints",
           "sampler": "Did you mean euler", "empty": "one prompt per line", "window": r"[0, 1]",
           "percent": "at least 12.5%"}[case]
    before = _history_size(servers[0])
    with caplog.at_level(logging.ERROR, logger="shapefirst.sweep"):
        assert sweep_cli.main(argv) == 2
    assert fix in caplog.text
    assert _history_size(servers[0]) == before
    assert not (tmp_path / "out" / "results.jsonl").exists()


def _tiny_clip_vision(tmp_path):
    """A random CLIP vision model of ComfyUI's own class, two layers of width 32 (seeded)."""
    import comfy.clip_vision
    import torch

    cfg = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
           "image_size": 32, "intermediate_size": 64, "layer_norm_eps": 1e-5, "model_type": "clip_vision_model",
           "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2, "patch_size": 8,
           "projection_dim": 16, "torch_dtype": "float32"}
    (tmp_path / "tiny.json").write_text(json.dumps(cfg))
    model = comfy.clip_vision.ClipVisionModel(str(tmp_path / "tiny.json"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.model.named_parameters():  # ComfyUI's layers are created without init
            if "norm" in name or "layrnorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_image_clipscore_through_core_clip_vision_encode(comfy, tmp_path):
    import torch

    model = _tiny_clip_vision(tmp_path)
    clip = metrics.NodeClipVision(model)
    rng = np.random.default_rng(0)
    a = rng.random((64, 64, 3)).astype(np.float32)
    b = rng.random((64, 64, 3)).astype(np.float32)
    ea, ea2, eb = clip.embed(a), clip.embed(a.copy()), clip.embed(b)
    assert np.isfinite(ea).all() and ea.shape == (16,)
    assert pure.cosine(ea, ea2) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        ref = torch.nn.functional.cosine_similarity(
            model.encode_image(torch.from_numpy(a)[None])["image_embeds"],
            model.encode_image(torch.from_numpy(b)[None])["image_embeds"]).item()
    assert pure.cosine(ea, eb) == pytest.approx(ref, abs=1e-5) and ref < 0.9999

    # through score(): the a = 0 image against itself and a different one
    from PIL import Image

    (tmp_path / "images").mkdir()
    for name, img in (("r.png", a), ("x.png", b)):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp_path / "images" / name)
    recs = {k: {"key": k, "prompt_index": 0, "prompt": "p", "window": w, "image": f"images/{f}", "seconds": 1.0}
            for k, w, f in (("p0|a=0", "a=0", "r.png"), ("p0|a=2", "a=2", "x.png"))}
    image_clip = next(m for m in metrics.METRICS if m.column.key == "image_clip")
    active = _l1_only() + [(image_clip, metrics.ImageClipScore(clip))]
    rows = {r["window"]: r for r in metrics.score(recs, tmp_path, active)[0]}
    assert rows["a=0"]["image_clip"] == pytest.approx(1.0, abs=1e-6) and rows["a=0"]["l1"] == 0
    assert rows["a=2"]["image_clip"] < 0.9999 and rows["a=2"]["l1"] > 0


def test_missing_metric_models_say_what_to_pass(comfy, tmp_path):
    with pytest.raises(FileNotFoundError, match="--clip-vision"):
        metrics.GraphClipVision(None, "no-such-clip-vision.safetensors")
    with pytest.raises(FileNotFoundError, match="--clip-hf"):
        metrics.HFTextClip(tmp_path / "no-clip-folder")


def test_a_server_killed_mid_sweep_still_completes(servers, sd15_ckpt, tmp_path):
    prompts = pure.parse_prompts(PROMPTS + "a red cube\n", default_seed=11)
    windows = pure.parse_windows(["a=1", "a=3"], STEPS)
    victim = servers[1]
    killed = []

    def on_record(record, srv):
        if srv.url == victim.url and not killed:
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(timeout=30)
            killed.append(record["key"])

    sweep = dsweep.Sweep(_settings(sd15_ckpt), prompts, windows, [srv.url for srv in servers], tmp_path / "out",
                         on_record=on_record)
    records = sweep.run()
    expected = {f"p{p}|{w}" for p in range(3) for w in ("a=0", "a=1", "a=3")}
    assert killed and set(records) == expected
    assert sorted(_result_keys(tmp_path / "out")) == sorted(expected)  # nothing lost, nothing twice
    dead, alive = sweep.servers[1], sweep.servers[0]
    assert dead.dropped and not alive.dropped and dead.done == 1 and alive.done == 8
    assert sweep.work.requeued >= 1  # the job queued behind the finished one went to the other server
    # the dead server's prompt finished elsewhere, away from its a = 0 twin: those times are not compared
    orphan = records[killed[0]]["prompt_index"]
    assert records[killed[0]]["window"] == "a=0" and any("dropped out" in n for n in sweep.notes)
    table, notes = sweep_table.aggregate(list(records.values()), windows)
    assert [r["timed_pairs"] for r in table] == [3, 2, 2] and "its a=0 twin ran on another server: 2" in notes[0]
    assert all(records[f"p{orphan}|{w}"]["server"] == alive.url for w in ("a=1", "a=3"))


def test_text_clipscore_from_a_local_transformers_folder(comfy, runtime_paths, tmp_path):
    """A tiny random transformers CLIP saved to a folder: loaded with local_files_only, scored as 100 x cosine."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = CLIPConfig(text_config={**tower, "max_position_embeddings": 77},
                     vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    folder = tmp_path / "tiny-clip"
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    CLIPTokenizer.from_pretrained(Path(runtime_paths["comfyui"]) / "comfy" / "sd1_tokenizer").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)

    scorer = metrics.HFTextClip(folder)
    img = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    got = scorer.score(img, "a blue bird")
    with torch.no_grad():  # the reference: the same model's projected features, cosine by torch
        inputs = scorer.proc(text=["a blue bird"], images=[(img * 255).round().astype(np.uint8)], return_tensors="pt")
        out = model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert 0 <= got <= 100 and got == pytest.approx(100 * max(cos, 0.0), abs=1e-3)


# -- the command as a researcher runs it: a real process, real signals ---------------------------
def test_help_answers_without_the_runtime_and_shows_defaults(tmp_path):
    """--help before anything is built: an empty runtime folder stays empty, and neither torch nor ComfyUI
    is imported."""
    runtime = tmp_path / "no-runtime"
    runtime.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFYUI_PYTHON", "SHAPEFIRST_COMFYUI_SRC")}
    env["SHAPEFIRST_RUNTIME_DIR"] = str(runtime)
    probe = ("import os, runpy, sys\nsys.argv = [sys.argv[1], '--help']\nsys.path.insert(0, os.path.dirname(sys.argv[0]))"
             "\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\nprint('EXIT', code, 'HEAVY', "
             "sorted(m for m in ('torch', 'numpy', 'comfy', 'aiohttp', 'PIL') if m in sys.modules))\n")
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
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
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


def test_ctrl_c_cancels_this_runs_jobs_only_and_the_same_command_resumes(servers, sd15_ckpt, tmp_path):
    srv = servers[0]
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
                                        pure.parse_windows([], 4)[0]), _settings(sd15_ckpt))
    graph["7"]["inputs"]["filename_prefix"] = "another_client"
    other = srv.post_json("/prompt", {"prompt": graph, "client_id": "another-client"})["prompt_id"]
    run.proc.send_signal(signal.SIGINT)
    rc, out, err = run.finish(timeout=120)

    assert rc == 130 and err.rstrip().endswith(sweep_cli.INTERRUPTED), err
    assert "Traceback" not in err + out
    assert not _sweep_items(srv.get_json("/queue")["queue_pending"])  # queued jobs deleted before it exited
    assert "cancelled 1 queued and 1 running job(s)" in err
    interrupted = _wait_history(srv, running[0])
    assert interrupted["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in interrupted["status"]["messages"])
    assert all(pid not in srv.get_json("/history") for pid in pending)  # never ran
    assert _wait_history(srv, other)["status"]["status_str"] == "success"  # the other client's job ran

    rc, out, err = _Run(args, tmp_path).finish()  # the same command again: only what is missing
    assert rc == 0, err
    assert sorted(_result_keys(tmp_path / "out")) == sorted(f"p{p}|{w}" for p in range(2) for w in ("a=0", "a=8"))
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
