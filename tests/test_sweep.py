"""The truncation sweep against two real ComfyUI servers on 127.0.0.1 (tiny random SD1.5, 64 px, few steps).
The command line as a user runs it (real processes, real signals) is in test_sweep_cli.py.

Order matters: the kill test stops one of the two module servers by its PID.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from devtools import sweep as dsweep
from devtools import sweep_cli, sweep_summary
from devtools import sweep_metrics as metrics
from shapefirst import sweep as pure
from shapefirst import sweep_table
from sweep_support import PROMPTS, STEPS, history_size, result_keys, settings, wait_history



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


def test_sweep_on_two_servers_is_complete_matches_the_windows_and_resumes(servers, sd15_ckpt, tmp_path, output_dir):
    prompts = pure.parse_prompts(PROMPTS, default_seed=3)
    windows = pure.parse_windows(["a=2", "a=4"], STEPS)
    out = tmp_path / "sweep"
    s = settings(sd15_ckpt)
    sweep = dsweep.Sweep(s, prompts, windows, [srv.url for srv in servers], out)
    records = sweep.run()

    expected = {f"p{p}|{w}" for p in range(2) for w in ("a=0", "a=2", "a=4")}
    assert set(records) == expected and sorted(result_keys(out)) == sorted(expected)  # each once
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
    hist = wait_history(servers[0], core)
    ref = hist["outputs"]["7"]["images"][0]
    with urllib.request.urlopen(f"{servers[0].url}/view?filename={ref['filename']}&type=output") as resp:
        (tmp_path / "core.png").write_bytes(resp.read())
    ours = metrics.load_image(out / records["p0|a=0"]["image"])
    assert sweep_table.l1(metrics.load_image(tmp_path / "core.png"), ours) == 0

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
    before = [history_size(srv) for srv in servers]
    again = dsweep.Sweep(s, prompts, windows, [srv.url for srv in servers], out)
    assert again.run() == records and again.queued == 0
    assert [history_size(srv) for srv in servers] == before
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-2]) + lines[-2][:20])  # one lost, one torn
    third = dsweep.Sweep(s, prompts, windows, [srv.url for srv in servers], out)
    assert set(third.run()) == expected and third.queued == 2
    assert len(result_keys(out)) == 6


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
    before = history_size(servers[0])
    with caplog.at_level(logging.ERROR, logger="shapefirst.sweep"):
        assert sweep_cli.main(argv) == 2
    assert fix in caplog.text
    assert history_size(servers[0]) == before
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
    assert sweep_table.cosine(ea, ea2) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        ref = torch.nn.functional.cosine_similarity(
            model.encode_image(torch.from_numpy(a)[None])["image_embeds"],
            model.encode_image(torch.from_numpy(b)[None])["image_embeds"]).item()
    assert sweep_table.cosine(ea, eb) == pytest.approx(ref, abs=1e-5) and ref < 0.9999

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

    sweep = dsweep.Sweep(settings(sd15_ckpt), prompts, windows, [srv.url for srv in servers], tmp_path / "out",
                         on_record=on_record)
    records = sweep.run()
    expected = {f"p{p}|{w}" for p in range(3) for w in ("a=0", "a=1", "a=3")}
    assert killed and set(records) == expected
    assert sorted(result_keys(tmp_path / "out")) == sorted(expected)  # nothing lost, nothing twice
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
