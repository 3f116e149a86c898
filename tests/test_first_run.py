"""Tier 2: every entry point started as a new user starts it, each in a fresh process, from nothing.

- ``--help`` of every entry script (scripts/, benchmarks/) answers without building a runtime and
  without importing torch, NumPy or ComfyUI, and shows the defaults;
- the main job (scripts/demo.py, quick) against an EMPTY models folder ($SHAPEFIRST_MODELS_DIR):
  every builder a first run needs runs (ShapeFirst World's checkpoint, assembled from the shipped
  parameters, a family's diffusion model, the VAEs, the family text encoder), the SD1.5 workflows
  run on the World in its words without touching the shipped files, and the summary shows what a
  user reads, the World's pictures first;
- ``--ckpt`` with a user's checkpoint builds nothing and skips the other families' workflows;
- ``--ui`` from an empty models folder serves the pack and the World, writes the World's copies of
  the SD1.5 workflows where the Workflows sidebar lists them, says what to load, and a SIGTERM to
  it ends its ComfyUI too;
- the workflow generator and the benchmarks in their shortest settings.
CI (.ci/run) starts the same commands from a clean clone with no runtime at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devtools import paths
from devtools.server import free_port

REPO = paths.REPO
ENTRY_SCRIPTS = sorted(p.relative_to(REPO).as_posix() for folder in ("scripts", "benchmarks")
                       for p in (REPO / folder).glob("*.py") if 'if __name__ == "__main__"' in p.read_text())
# what --help must not import (sys.modules[name] = None makes importing it fail)
HEAVY = ("torch", "numpy", "comfy", "safetensors", "PIL")
HELP_RUNNER = f"""
import os, runpy, sys
for name in {HEAVY!r}:
    sys.modules[name] = None
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""
# the first run: an SD1.5 workflow with a temp preview and data files, one whose report comes as an
# event (the model patch), the [EOS] swap (a picture at the summary's top), and a small family (SD3.5)
# with truncated guidance
FIRST_RUN = ["fig2_frequency_over_sampling", "everyday_truncated_cfg_model_patch", "fig4_eos_swap_bird_chair",
             "sd35_truncated_cfg"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SHAPEFIRST_IN_RUNTIME"}
    env.update(extra)
    return env


def _run(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_help_answers_without_building_or_importing_torch(script, tmp_path):
    env = {k: v for k, v in _env(SHAPEFIRST_RUNTIME_DIR=str(tmp_path / "runtime")).items()
           if k not in ("COMFYUI_PATH", "SHAPEFIRST_COMFYUI_SRC")}
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, script, "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:") and "(default" in proc.stdout.replace("\n", " ")
    assert not (tmp_path / "runtime").exists()  # nothing built, not even the runtime folder


def test_a_disk_too_full_for_the_runtime_is_refused_before_anything_is_written(tmp_path):
    """A full disk half-way through pip leaves a broken venv and a traceback naming a file inside it (CI
    once stopped so after 45 s): the builder checks the free space first and names the way out."""
    env = {k: v for k, v in _env(SHAPEFIRST_RUNTIME_DIR=str(tmp_path / "runtime"),
                                 SHAPEFIRST_BUILD_NEEDS_GB="1e9").items()
           if k not in ("COMFYUI_PATH", "SHAPEFIRST_COMFYUI_SRC")}
    proc = subprocess.run([sys.executable, "scripts/runtime.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "needs about 1000000000.0 GB free" in proc.stderr and "COMFYUI_PATH" in proc.stderr
    assert str(tmp_path / "runtime") in proc.stderr
    assert not (tmp_path / "runtime").exists()  # refused before the first write


def test_help_shows_the_defaults_a_user_needs():
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, "scripts/demo.py", "--help"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=60)
    text = " ".join(proc.stdout.split())
    assert "(default: 8188)" in text and f"(default: {paths.DEMO_OUTPUT})" in text


@pytest.fixture(scope="module")
def first_run(runtime_paths, tmp_path_factory) -> dict:
    """The quick main job on a subset of the workflows, in a fresh process, from an empty models folder."""
    models, out = tmp_path_factory.mktemp("empty-models"), tmp_path_factory.mktemp("demo-out")
    env = _env(SHAPEFIRST_MODELS_DIR=str(models))
    args = ["scripts/demo.py", "--out", str(out)] + [a for name in FIRST_RUN for a in ("--only", name)]
    shipped = {p.name: p.read_bytes() for p in paths.WORKFLOWS.iterdir()}
    proc = _run(args, env, timeout=1200)
    host_models = Path(runtime_paths["models"])
    return {"proc": proc, "out": out, "env": env, "shipped": shipped,
            "models": models / host_models.name}  # the same host's folder under the empty base


def test_main_job_runs_from_an_empty_models_folder(first_run):
    from devtools import checkpoints, families
    from devtools.world import assemble

    stdout, models = first_run["proc"].stdout, first_run["models"]
    assert "assembling the ShapeFirst World checkpoint" in stdout
    assert f"{len(FIRST_RUN)} of {len(FIRST_RUN)} workflows ran" in stdout
    built = _files(models)
    assert f"checkpoints/{assemble.file_name('checkpoint')}" in built
    assert f"checkpoints/{checkpoints.checkpoint_name('sd15')}" not in built  # the random SD1.5 is for tests only
    assert f"diffusion_models/{families.diffusion_model_name('sd3')}" in built
    assert {f"vae/{families.vae_name(v)}" for v in families.VAES} <= built


def test_first_run_summary_shows_the_saving_and_links_only_files_it_kept(first_run):
    out = first_run["out"]
    summary_path = out / ("summary-" + "+".join(sorted(FIRST_RUN)) + ".md")
    assert not (out / "summary.md").exists()  # a run of --only keeps the whole run's summary
    text = summary_path.read_text()
    data = json.loads(summary_path.with_suffix(".json").read_text())
    saved = {w["name"]: w["saved"] for w in data["workflows"]}
    assert saved["fig2_frequency_over_sampling"] is None
    assert 0 < saved["everyday_truncated_cfg_model_patch"] < 1 and 0 < saved["sd35_truncated_cfg"] < 1
    assert "model work saved" in text and f"{100 * saved['sd35_truncated_cfg']:.1f}%" in text
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert any(link.endswith(".csv") for link in links) and any(link.endswith(".json") for link in links)
    assert links and all((out / link).is_file() for link in links), [lk for lk in links if not (out / lk).is_file()]
    assert ".work" not in text  # temp previews are copied next to the outputs
    assert data["peak_rss_mb"] > 0


def test_first_run_shows_the_worlds_pictures_in_its_words_and_leaves_the_shipped_files(first_run):
    from PIL import Image

    from devtools.demo_highlights import SCALE

    out = first_run["out"]
    text = (out / ("summary-" + "+".join(sorted(FIRST_RUN)) + ".md")).read_text()
    assert "shapefirst-world" in text and "ShapeFirst World" in text
    top = text[text.index("## What ShapeFirst World shows"):text.index("## Every workflow")]
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", top)
    assert pictures == ["highlights/fig4_eos_swap_bird_chair.png"]
    with Image.open(out / pictures[0]) as strip:  # the four panels (64 px, 8 px apart), enlarged
        assert strip.size == (SCALE * (4 * 64 + 3 * 8), SCALE * 64)
    assert '"A blue bird" -> **"a blue circle"**' in top and '"A brown chair" -> **"a red square"**' in top
    assert {p.name: p.read_bytes() for p in paths.WORKFLOWS.iterdir()} == first_run["shipped"]


def test_own_checkpoint_builds_nothing_and_skips_other_families(first_run, tmp_path):
    from devtools.world import assemble

    ckpt = first_run["models"] / "checkpoints" / assemble.file_name("checkpoint")  # any SD1.x checkpoint
    models, out = tmp_path / "models", tmp_path / "out"
    proc = _run(["scripts/demo.py", "--ckpt", str(ckpt), "--size", "64", "--out", str(out),
                 "--only", "fast_txt2img_truncated_cfg", "--only", "sd35_truncated_cfg"],
                _env(SHAPEFIRST_MODELS_DIR=str(models)), timeout=600)
    assert "building" not in proc.stdout and "assembling" not in proc.stdout
    assert "World's words" not in (out / "summary-fast_txt2img_truncated_cfg+sd35_truncated_cfg.md").read_text()
    assert "[1/2] fast_txt2img_truncated_cfg ok" in proc.stdout and "[2/2] sd35_truncated_cfg skipped" in proc.stdout
    assert _files(models) == set()


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read().decode())


def test_ui_starts_from_an_empty_models_folder_and_sigterm_stops_its_comfyui(runtime_paths, tmp_path):
    import psutil

    from devtools.demo_world import UI_FOLDER, UI_STEPS, sd15_workflows
    from devtools.world import assemble

    port = free_port()
    env = _env(SHAPEFIRST_MODELS_DIR=str(tmp_path / "models"), SHAPEFIRST_UI_DIR=str(tmp_path / "ui"))
    proc = subprocess.Popen([sys.executable, "scripts/demo.py", "--ui", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, children = [], []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "demo --ui ended before it served:\n" + "".join(lines)
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        spec = _get(f"http://127.0.0.1:{port}/object_info/CheckpointLoaderSimple")[
            "CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        ckpts = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # newer hosts: a COMBO with options
        assert assemble.file_name("checkpoint") in ckpts
        assert "TruncatedCFGSampler" in _get(f"http://127.0.0.1:{port}/object_info/TruncatedCFGSampler")
        listed = _get(f"http://127.0.0.1:{port}/api/userdata?dir=workflows&recurse=true")
        sd15 = sd15_workflows(paths.WORKFLOWS)
        assert sorted(f"{UI_FOLDER}/{p.name}" for p in sd15) == sorted(n for n in listed if n.startswith(UI_FOLDER))
        copy = json.loads((tmp_path / "ui" / "user" / "default" / "workflows" / UI_FOLDER /
                           "fig4_eos_swap_bird_chair.json").read_text())
        values = {n["type"]: n["widgets_values"] for n in copy["nodes"]}
        assert values["CheckpointLoaderSimple"] == [assemble.file_name("checkpoint")]
        assert values["EmptyLatentImage"] == [64, 64, 1] and "a blue circle" in json.dumps(copy)
        assert values["KSampler"][:4] == [42, "fixed", UI_STEPS, 7.5]  # the shipped 50 steps, capped
        text = "".join(lines)
        assert f"{len(sd15)} SD1.5 workflow(s) run on ShapeFirst World" in text and f"{UI_FOLDER}/" in text
        assert "v1-5-pruned-emaonly.safetensors" in text and "fig2_frequency_over_sampling" in text
        assert "flux_eos_swap_pooled: diffusion_models/flux1-dev.safetensors" in text
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:  # never leave a server behind, whatever the test found
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
    alive = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"ComfyUI still running after SIGTERM to demo --ui: {alive}"


def test_workflow_generator_from_a_fresh_process(tmp_path):
    _run(["scripts/make_workflows.py", "--out", str(tmp_path)], _env(), timeout=600)
    assert _files(tmp_path) == {n for n in _files(paths.WORKFLOWS) if n.endswith(".json")}  # and thumbnails
    for name in _files(tmp_path):
        assert (tmp_path / name).read_text() == (paths.WORKFLOWS / name).read_text(), name


@pytest.mark.parametrize("args", [
    ["benchmarks/frequency_split.py", "--size", "64", "--repeats", "1"],
    ["benchmarks/attention_capture.py", "--steps", "1", "--rounds", "1"],
    ["benchmarks/truncated_cfg.py", "--quick", "--size", "64", "--rounds", "1", "--peer-steps", "10"],
    ["benchmarks/demo_memory.py", "--only", "sd35_truncated_cfg"],
], ids=lambda a: Path(a[0]).stem)
def test_benchmark_runs_from_an_empty_models_folder(args, tmp_path):
    proc = _run(args, _env(SHAPEFIRST_MODELS_DIR=str(tmp_path)), timeout=900)
    assert "ratio" in proc.stdout or "ideal" in proc.stdout, proc.stdout[-2000:]
