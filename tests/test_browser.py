"""Tier 3: a real ComfyUI server and its front end in headless Chromium.

Loads the shipped Fig. 2 workflow the way a person does (from the pack's workflow templates),
checks that the front end turns it into the same API graph as the headless converter, runs
it with the Run button, and checks that the pack's nodes show their outputs: the image
preview of Frequency Split Preview and the chart that js/ draws in Frequency Curves.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from devtools import server as comfy_server
from devtools.paths import WORKFLOWS
from devtools.workflows import convert as workflow_tools

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SHAPEFIRST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORKFLOW = "fig2_frequency_over_sampling"


@pytest.fixture(scope="module")
def browser_path():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        if os.environ.get("SHAPEFIRST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM}; install it (apt-get install chromium)")
        pytest.skip(f"Chromium not found at {CHROMIUM}; install it (apt-get install chromium) for browser tests")
    return CHROMIUM


@pytest.fixture(scope="module")
def live_server(runtime_paths, checkpoints_dir, sd15_ckpt, tmp_path_factory, browser_path):
    ckpt = checkpoints_dir / sd15_ckpt  # built (once) by the in-process fixtures, which set up ComfyUI
    base = comfy_server.prepare_base(tmp_path_factory.mktemp("server"), [ckpt])
    srv = comfy_server.ComfyServer(runtime_paths["python"], runtime_paths["comfyui"], base)
    srv.start()
    srv.post_json("/settings", {"Comfy.TutorialCompleted": True})
    srv.ckpt_name = ckpt.name
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(live_server, browser_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS, headless=True)
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.console_errors = []
        pg.on("pageerror", lambda exc: pg.console_errors.append(str(exc)))
        pg.goto(live_server.url)
        pg.wait_for_function("window.app && window.app.graph && window.app.extensionManager", timeout=90_000)
        yield pg
        browser.close()


def _wait_for_history(srv, timeout: float = 120.0) -> dict:
    """The server's history once the queued prompt has finished (success or error)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = srv.get_json("/history")
        if history and all(h.get("status", {}).get("completed") is not None for h in history.values()):
            return history
        time.sleep(0.5)
    raise AssertionError(f"no finished prompt in /history after {timeout}s:\n{srv.log_tail()}")



def _small_run(ckpt: str, steps: int) -> list[tuple]:
    """What a person sets on a CPU: their checkpoint, a small size and few steps."""
    return [("CheckpointLoaderSimple", "ckpt_name", ckpt), ("EmptyLatentImage", "width", 64),
            ("EmptyLatentImage", "height", 64), ("KSampler", "steps", steps)]


def _set_widgets(page, settings: list[tuple]) -> None:
    """Set widget ``name`` of every node of ``type`` to ``value``, as a person editing the graph would."""
    page.evaluate(
        """(settings) => {
          for (const [type, name, value] of settings) {
            for (const n of app.graph.nodes.filter(n => n.type === type)) {
              const w = n.widgets.find(w => w.name === name); w.value = value; w.callback?.(value);
            }
          }
          app.graph.setDirtyCanvas(true, true);
        }""", [list(x) for x in settings])

def test_pack_is_listed_and_its_extension_loads(live_server, page):
    info = live_server.get_json("/object_info")
    for name in ("FrequencySplitPreview", "FrequencyTrace", "FrequencyCurves"):
        assert name in info and info[name]["python_module"].endswith("comfyui-shapefirst")
    shipped = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(live_server.get_json("/workflow_templates")["comfyui-shapefirst"]) == shipped
    names = page.evaluate("app.extensions.map(e => e.name)")
    assert {"ShapeFirst.views", "ShapeFirst.tokenTable", "ShapeFirst.attention"} <= set(names)


def test_fig2_workflow_runs_in_the_browser_and_shows_preview_and_chart(live_server, page, output_dir):
    shipped = json.loads((WORKFLOWS / f"{WORKFLOW}.json").read_text())
    result = page.evaluate(
        """async (name) => {
          const r = await fetch(`/api/workflow_templates/comfyui-shapefirst/${name}.json`);
          const wf = await r.json();
          await app.loadGraphData(wf);
          const p = await app.graphToPrompt();
          return {served: wf, output: p.output};
        }""", WORKFLOW)
    assert result["served"] == shipped  # ComfyUI serves the file we ship
    # the headless converter produces exactly what the real front end queues
    expected = workflow_tools.ui_to_api(shipped, live_server.get_json("/object_info"))
    assert result["output"] == expected

    # a person picks their checkpoint and, on a CPU, a small size and few steps
    _set_widgets(page, _small_run(live_server.ckpt_name, steps=6))
    page.get_by_role("button", name="Run", exact=True).click()

    # Frequency Curves: the chart drawn by js/ inside the node
    page.wait_for_function(
        "document.querySelector('[data-shapefirst=\"frequency-curves\"]')?.dataset.steps", timeout=180_000)
    history = _wait_for_history(live_server)
    assert [h["status"]["status_str"] for h in history.values()] == ["success"]
    curves_id = str(next(n["id"] for n in shipped["nodes"] if n["type"] == "FrequencyCurves"))
    sampled = next(iter(history.values()))["outputs"][curves_id]["shapefirst_curves"][0]
    # 6 steps of ddim_uniform sample 7 sigmas in ComfyUI; the node shows what was sampled
    assert sampled["steps"] >= 6 and len(sampled["sigmas"]) == sampled["steps"]
    chart = page.evaluate(
        """() => {
          const root = document.querySelector('[data-shapefirst="frequency-curves"]');
          const c = root.querySelector('canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let coloured = 0;
          for (let i = 0; i < d.length; i += 4) {
            const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
            if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;  // palette colours, not greys
          }
          const box = c.getBoundingClientRect();
          return {coloured, series: root.dataset.series, text: root.textContent,
                  links: Array.from(root.querySelectorAll('a')).map(a => a.textContent),
                  visible: box.width > 50 && box.height > 50};
        }""")
    assert chart["visible"] and chart["series"] == "8" and chart["coloured"] > 300
    assert page.evaluate("document.querySelector('[data-shapefirst=\"frequency-curves\"]').dataset.steps") == str(
        sampled["steps"])
    assert f"{sampled['steps']} steps" in chart["text"]
    assert sorted(x.rsplit(".", 1)[1] for x in chart["links"]) == ["csv", "json"]

    # Frequency Split Preview: its image preview is loaded in the node
    split_id = next(n["id"] for n in shipped["nodes"] if n["type"] == "FrequencySplitPreview")
    page.wait_for_function(
        f"""() => {{ const n = app.graph.getNodeById({split_id});
                    return n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }}""",
        timeout=60_000)
    size = page.evaluate(f"[app.graph.getNodeById({split_id}).imgs[0].naturalWidth, "
                         f"app.graph.getNodeById({split_id}).imgs[0].naturalHeight]")
    assert size[0] > 3 * 64 and size[1] == 64 + 16  # input | low | high, decoded, with labels
    page.screenshot(path=str(output_dir / "fig2_frequency_over_sampling.png"))
    assert not page.console_errors, page.console_errors


def test_eos_swap_token_table_is_shown_as_text(live_server, page, output_dir):
    """The Fig. 4 workflow from the templates, run with a hostile prompt: the token table appears
    in the node with one row per position, and the prompt's markup stays text."""
    name = "fig4_eos_swap_bird_chair"
    hostile = 'a <img src=x onerror="window.__pwned=1"> bird'
    page.evaluate(
        """async ([name, ckpt, hostile]) => {
          const r = await fetch(`/api/workflow_templates/comfyui-shapefirst/${name}.json`);
          await app.loadGraphData(await r.json());
          const set = (node, wname, value) => {
            const w = node.widgets.find(w => w.name === wname); w.value = value; w.callback?.(value);
          };
          for (const n of app.graph.nodes) {
            if (n.type === 'CheckpointLoaderSimple') set(n, 'ckpt_name', ckpt);
            if (n.type === 'EmptyLatentImage') { set(n, 'width', 64); set(n, 'height', 64); }
            if (n.type === 'KSampler') set(n, 'steps', 3);
          }
          const swap = app.graph.nodes.filter(n => n.type === 'EOSSwapConditioning').sort((a, b) => a.id - b.id)[0];
          set(swap, 'prompt_a', hostile);
          app.graph.setDirtyCanvas(true, true);
        }""", [name, live_server.ckpt_name, hostile])
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function(
        "document.querySelectorAll('[data-shapefirst=\"token-table\"]').length === 2 && "
        "Array.from(document.querySelectorAll('[data-shapefirst=\"token-table\"]')).every(e => e.dataset.rows === '77')",
        timeout=180_000)
    history = _wait_for_history(live_server)
    assert all(h["status"]["status_str"] == "success" for h in history.values())
    view = page.evaluate(
        """() => {
          const roots = Array.from(document.querySelectorAll('[data-shapefirst="token-table"]'));
          return roots.map(root => ({
            imgs: root.querySelectorAll('img').length,
            text: root.textContent,
            roles: Array.from(root.querySelectorAll('tr[data-role]')).map(tr => tr.dataset.role),
          }));
        }""")
    assert page.evaluate("window.__pwned === undefined")
    assert all(v["imgs"] == 0 for v in view)
    hostile_view = next(v for v in view if "img" in v["text"])
    tokens = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-shapefirst="token-table"] tr[data-role="SEM"] td:nth-child(2)'))
                   .map(td => td.textContent)""")
    assert {"<", "img", "src", "="} <= set(tokens)  # CLIP's tokens of the markup, shown as text
    for v in view:
        assert v["roles"][0] == "[SOS]" and "[EOS]" in v["roles"] and "SEM" in v["roles"]
    page.screenshot(path=str(output_dir / "eos_swap_token_table.png"))


ATTENTION_WORKFLOW = "fig1_attention_maps_over_steps"


def test_fig1_attention_view_scrubs_tokens_and_steps_and_shows_text_as_text(live_server, page, output_dir):
    shipped = json.loads((WORKFLOWS / f"{ATTENTION_WORKFLOW}.json").read_text())
    output = page.evaluate(
        """async (name) => {
          const r = await fetch(`/api/workflow_templates/comfyui-shapefirst/${name}.json`);
          await app.loadGraphData(await r.json());
          return (await app.graphToPrompt()).output;
        }""", ATTENTION_WORKFLOW)
    assert output == workflow_tools.ui_to_api(shipped, live_server.get_json("/object_info"))
    # a prompt with markup: labels must arrive as text, never as elements
    _set_widgets(page, _small_run(live_server.ckpt_name, steps=4) +
                 [("PrimitiveStringMultiline", "value", "a <img src=x onerror=window.pwned=1> mug")])
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function(
        "document.querySelector('[data-shapefirst=\"attention-view\"]')?.dataset.step", timeout=240_000)
    history = _wait_for_history(live_server, 240)
    assert all(h["status"]["status_str"] == "success" for h in history.values())
    view = page.evaluate(
        """() => {
          const root = document.querySelector('[data-shapefirst="attention-view"]');
          const select = root.querySelector('select'), slider = root.querySelector('input[type=range]');
          const options = Array.from(select.options).map(o => o.textContent);
          const before = root.dataset.step;
          slider.value = '0'; slider.dispatchEvent(new Event('input'));
          const first = root.dataset.step;
          select.value = '2'; select.dispatchEvent(new Event('change'));
          const canvas = root.querySelector('canvas');
          const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let coloured = 0;
          for (let i = 0; i < d.length; i += 4) if (Math.max(d[i], d[i + 1], d[i + 2]) > 40) coloured++;
          return {options, before, first, token: root.dataset.token, coloured, steps: root.dataset.steps,
                  imgs: root.querySelectorAll('img').length, pwned: window.pwned === 1};
        }""")
    # ddim_uniform may sample one sigma more than asked: the slider spans the steps actually recorded
    assert int(view["steps"]) >= 4 and view["before"] == str(int(view["steps"]) - 1) and view["first"] == "0"
    assert view["options"][0] == "0: [SOS] (SOS)" and view["token"] == "2"
    assert any(o.split(": ", 1)[1].startswith("<") for o in view["options"])
    assert view["imgs"] == 0 and not view["pwned"]
    assert view["coloured"] > 1000  # the image with the heat overlay
    page.screenshot(path=str(output_dir / "fig1_attention_maps_over_steps.png"))
    assert not page.console_errors, page.console_errors
