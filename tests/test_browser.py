"""Tier 3: a real ComfyUI server and its front end in headless Chromium.

Every test runs against two front ends (the one ComfyUI 0.3.75 pins and the newest published
one) in both node modes (the classic canvas and Nodes 2.0, where nodes are Vue components):
one server per front end, one page per mode. Shipped workflows are loaded the way a person
does (from the pack's workflow templates) and run with the Run button; the pack's views must
appear inside their nodes, stay inside them, keep text as text, and the page must log nothing
about the pack. Screenshots land in test-output/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import browser_support as bs
from devtools import server as comfy_server
from devtools.workflows import convert as workflow_tools
from devtools import frontends
from devtools.paths import RUNTIME_DIR, WORKFLOWS

pytestmark = pytest.mark.browser

REPO = bs.REPO
CKPT_LOADER = "CheckpointLoaderSimple"
COMBOS = [f"{fe}-{mode}" for fe in frontends.FRONTENDS for mode in bs.MODES]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(bs.CHROMIUM) and not Path(bs.CHROMIUM).exists():
        message = f"Chromium not found at {bs.CHROMIUM}; install it (apt-get install chromium) for browser tests"
        if os.environ.get("SHAPEFIRST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=bs.CHROMIUM, args=bs.CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def servers(runtime_paths, checkpoints_dir, sd15_ckpt, tmp_path_factory, browser):
    """One server per front end, started when first needed; the previous one stops then."""
    ckpt = checkpoints_dir / sd15_ckpt  # built (once) by the in-process fixtures, which set up ComfyUI
    python = Path(runtime_paths["python"])
    running: dict = {}

    def get(frontend: str):
        if frontend not in running:
            for other in running.values():
                other.stop()
            running.clear()
            base = comfy_server.prepare_base(tmp_path_factory.mktemp(f"server-{frontend}"), [ckpt])
            srv = bs.FrontendServer(python, runtime_paths["comfyui"], base,
                                    front_end_root=frontends.frontend_root(frontend, python=str(python)))
            srv.start()
            srv.ckpt_name = ckpt.name
            running[frontend] = srv
        return running[frontend]

    yield get
    for srv in running.values():
        srv.stop()


@pytest.fixture(scope="module", params=COMBOS)
def ui(request, servers, browser):
    frontend, mode = request.param.rsplit("-", 1)
    page = bs.PackPage(browser, servers(frontend), mode, frontend)
    yield page
    page.close()


@pytest.fixture
def page(ui):
    """The page of this front end and mode; the test fails if the page logged anything about the pack."""
    ui.console.clear()
    yield ui
    assert not ui.pack_console_lines(), "\n".join(ui.pack_console_lines())


def _small_run(ckpt: str, steps: int) -> list[tuple]:
    """What a person sets on a CPU: their checkpoint, a small size and few steps."""
    return [(CKPT_LOADER, "ckpt_name", ckpt), ("EmptyLatentImage", "width", 64),
            ("EmptyLatentImage", "height", 64), ("KSampler", "steps", steps), ("TruncatedCFGSampler", "steps", steps)]


def _shot(page, output_dir: Path, name: str) -> None:
    page.screenshot(output_dir / f"{name}-{page.frontend}-{page.mode}.png")


def _assert_inside_node(page, node_id, kind: str, max_height: float | None = None) -> dict:
    """The view of ``kind`` in node ``node_id`` is visible and drawn inside its node."""
    page.show_node(node_id)
    geo = page.view_geometry(node_id, kind)
    assert geo["view"] and geo["visible"], geo
    assert geo["vue"] == (page.mode == "vue"), geo
    assert geo["view"]["height"] > 10 and geo["view"]["width"] > 100, geo
    assert bs.inside(geo["view"], geo["node"]), f"the {kind} view is drawn outside its node: {geo}"
    if max_height is not None:
        assert geo["view"]["height"] <= max_height * geo["scale"] + 1, geo
    return geo


def _assert_no_overlaps(page, output_dir: Path, name: str) -> None:
    """After a run, with every view open and every image shown, no node covers another (the views
    once grew over their neighbours: the attention view, the token table's width, image previews)."""
    boxes = page.node_boxes()
    assert all(b["vue"] == (page.mode == "vue") for b in boxes), boxes
    clashes = bs.overlaps(boxes)
    if clashes:
        _shot(page, output_dir, f"{name}-overlap")
    assert not clashes, "\n".join(clashes)


def test_console_filter_keeps_the_packs_lines_and_drops_only_known_noise():
    ext = f"http://127.0.0.1:1/extensions/{bs.PACK}/shapefirst.js"
    lines = [
        "warning: ShapeFirst: TruncatedCFGGuider could not show its output: TypeError (at )",
        f"pageerror: x is undefined\n    at showGuidance ({ext}:40:3)",
        f"error: Failed to load resource: net::ERR_CONNECTION_REFUSED (at {ext})",
        "error: Failed to load resource: the server responded with a status of 404 (at /api/jobs?workflow=shapefirst)",
        "error: GET /api/userdata/workflows/shapefirst_fig2.json 404 (at )",
        "error: net::ERR_NAME_NOT_RESOLVED shapefirst (at https://registry.example/)",
        "error: something else entirely (at /assets/index.js)",
    ]
    assert bs.pack_lines(lines) == lines[:3]


def test_pack_is_listed_and_its_extension_loads(page):
    info = page.srv.get_json("/object_info")
    for name in ("FrequencySplitPreview", "FrequencyTrace", "FrequencyCurves", "TruncatedCFGGuider"):
        assert name in info and info[name]["python_module"].endswith(bs.PACK)
    shipped = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(page.srv.get_json("/workflow_templates")[bs.PACK]) == shipped
    names = page.evaluate("app.extensions.map(e => e.name)")
    assert {"ShapeFirst.views", "ShapeFirst.tokenTable", "ShapeFirst.attention"} <= set(names)
    keys = page.evaluate(f"import('/extensions/{bs.PACK}/common.js').then(m => m.UI_KEYS)")
    assert keys == json.loads((REPO / "js" / "ui_keys.json").read_text())


def test_js_and_python_draw_the_same_figures(page):
    """Both renderers read js/figures.json: the panels the page draws are the ones the IMAGE shows."""
    from shapefirst import chart

    payloads = {
        "frequency_curves": {"curves": {k: [1.0, 0.5, None] for k in (
            "forward_signal_low", "forward_signal_high", "forward_noise_low", "forward_noise_high",
            "denoise_xt_low", "denoise_xt_high", "denoise_x0pred_low", "denoise_x0pred_high",
            "ratio_denoise_low", "ratio_denoise_high", "ratio_forward_low", "ratio_forward_high")}},
        "attention_view": {"steps": [0, 3, 6], "class_shares": {"SOS": [0.5, 0.4, 0.3], "EOS": [0.1, 0.2, 0.3]},
                           "edge_f1": {"mean": [0.1, 0.2, 0.3], "relative": [None, 0.5, 1.0]}},
        "attention_kl": {"steps": [1, 2], "kl_a_b": [0.2, 0.1], "kl_b_a": [0.3, 0.05]},
        "guidance": {"steps": 8, "curve": [{"step": 0, "rms_uncond": 1.0, "rms_guidance": 0.5, "ratio": 0.5},
                                           {"step": 1, "rms_uncond": 0.8, "rms_guidance": 0.2, "ratio": 0.25}]},
    }
    assert set(payloads) == set(chart.figures()["figures"])
    drawn = page.evaluate(
        """async ([pack, payloads]) => {
          const m = await import(`/extensions/${pack}/chart.js`);
          const out = {};
          for (const [name, payload] of Object.entries(payloads)) {
            out[name] = m.figurePanels(name, payload).map(p => ({title: p.title, yLabel: p.yLabel,
              xRange: p.xRange ?? null,
              series: p.series.map(s => ({label: s.label, dashed: s.dashed, x: s.x ?? null, color: s.color ?? null,
                marker: s.marker ?? null, values: s.values.map(v => Number.isFinite(v) ? v : null)}))}));
          }
          return out;
        }""", [bs.PACK, payloads])
    for name, payload in payloads.items():
        expected = [{"title": p.title, "yLabel": p.y_label, "xRange": list(p.x_range) if p.x_range else None,
                     "series": [{"label": s.label, "dashed": s.dashed, "x": s.x,
                                 "color": "#%02x%02x%02x" % s.color if s.color else None, "marker": s.marker,
                                 "values": [v if v == v else None for v in s.values]} for s in p.series]}
                    for p in chart.figure_panels(name, payload)]
        assert drawn[name] == expected, name
    assert [s["label"] for s in drawn["attention_view"][0]["series"]] == ["SOS", "EOS"]  # absent classes skipped
    assert drawn["guidance"][0]["xRange"] == [0, 7] and drawn["guidance"][0]["series"][0]["x"] == [0, 1]


def test_fig2_workflow_runs_in_the_browser_and_shows_preview_and_chart(page, output_dir):
    name = "fig2_frequency_over_sampling"
    shipped = json.loads((WORKFLOWS / f"{name}.json").read_text())
    served = page.load_template(name)
    assert served == shipped  # ComfyUI serves the file we ship
    # the headless converter produces exactly what the real front end queues
    output = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert output == workflow_tools.ui_to_api(shipped, page.srv.get_json("/object_info"))

    page.set_widgets(_small_run(page.srv.ckpt_name, steps=4))
    entry = page.run()
    page.wait_for_view("frequency-curves", "steps")
    curves_id = next(n["id"] for n in shipped["nodes"] if n["type"] == "FrequencyCurves")
    sampled = entry["outputs"][str(curves_id)]["shapefirst_curves"][0]
    assert sampled["steps"] >= 4 and len(sampled["sigmas"]) == sampled["steps"]
    _assert_inside_node(page, curves_id, "frequency-curves")
    chart = page.evaluate(
        """() => {
          const root = document.querySelector('[data-shapefirst="frequency-curves"]');
          const c = root.querySelector('canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let coloured = 0;
          for (let i = 0; i < d.length; i += 4) {
            if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) coloured++;
          }
          return {coloured, series: root.dataset.series, steps: root.dataset.steps, text: root.textContent,
                  links: Array.from(root.querySelectorAll('a')).map(a => a.textContent)};
        }""")
    assert chart["series"] == "12" and chart["coloured"] > 300  # three panels of four curves
    assert chart["steps"] == str(sampled["steps"]) and f"{sampled['steps']} steps" in chart["text"]
    assert sorted(x.rsplit(".", 1)[1] for x in chart["links"]) == ["csv", "json"]

    # Frequency Split Preview: its image preview is loaded in the node
    split_id = next(n["id"] for n in shipped["nodes"] if n["type"] == "FrequencySplitPreview")
    # (the classic canvas keeps it in node.imgs, a Vue node shows it as an <img> element)
    loaded = """(id) => {
      const n = app.graph.getNodeById(id);
      const img = n.imgs?.[0] ?? document.querySelector(`[data-node-id="${id}"] img`);
      return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;
    }"""
    page.page.wait_for_function(loaded, arg=split_id, timeout=60_000)
    size = page.evaluate(loaded, split_id)
    assert size[0] > 3 * 64 and size[1] == 64 + 16  # input | low | high, decoded, with labels
    _assert_no_overlaps(page, output_dir, name)
    page.show_node(curves_id)
    _shot(page, output_dir, name)


def test_eos_swap_token_table_is_text_and_scrolls_inside_its_node(page, output_dir):
    """The Fig. 4 workflow run with a hostile prompt: one row per position, markup stays text, and
    the 77-row table scrolls inside a view of fixed height (it once grew to all 77 rows, about
    1,600 canvas units, in Nodes 2.0 and covered the node below)."""
    name = "fig4_eos_swap_bird_chair"
    hostile = 'a <img src=x onerror="window.__pwned=1"> bird'
    page.load_template(name)
    page.set_widgets(_small_run(page.srv.ckpt_name, steps=3))
    swap_ids = page.evaluate("app.graph.nodes.filter(n => n.type === 'EOSSwapConditioning').map(n => n.id).sort((a, b) => a - b)")
    page.evaluate("""([id, text]) => { const n = app.graph.getNodeById(id);
        const w = n.widgets.find(w => w.name === 'prompt_a'); w.value = text; w.callback?.(text); }""",
                  [swap_ids[0], hostile])
    page.run()
    page.page.wait_for_function(
        "Array.from(document.querySelectorAll('[data-shapefirst=\"token-table\"]')).filter(e => e.dataset.rows === '77').length === 2",
        timeout=60_000)
    view = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-shapefirst="token-table"]')).map(root => ({
            imgs: root.querySelectorAll('img').length, text: root.textContent,
            roles: Array.from(root.querySelectorAll('tr[data-role]')).map(tr => tr.dataset.role)}))""")
    assert page.evaluate("window.__pwned === undefined")
    assert all(v["imgs"] == 0 for v in view)
    tokens = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-shapefirst="token-table"] tr[data-role="SEM"] td:nth-child(2)'))
                   .map(td => td.textContent)""")
    assert {"<", "img", "src", "="} <= set(tokens)  # CLIP's tokens of the markup, shown as text
    for v in view:
        assert v["roles"][0] == "[SOS]" and "[EOS]" in v["roles"] and "SEM" in v["roles"]
    for node_id in swap_ids:
        geo = _assert_inside_node(page, node_id, "token-table", max_height=300)
        assert geo["scroll"]["scroll"] > 3 * geo["scroll"]["client"]  # the rows scroll inside the view
        assert geo["node"]["height"] < 1100 * geo["scale"], geo  # the node did not grow with the rows
    _assert_no_overlaps(page, output_dir, name)
    _shot(page, output_dir, "eos_swap_token_table")


def test_fig4_skyline_butterfly_views_open_without_covering_a_neighbour(page, output_dir):
    """The other Fig. 4 workflow: long sentences (more table rows, longer titles), the same check."""
    name = "fig4_eos_swap_skyline_butterfly"
    page.load_template(name)
    # a new run per page (a cached node shows nothing): noise_seed changes the swap nodes' inputs only
    page.set_widgets(_small_run(page.srv.ckpt_name, steps=2) +
                     [("EOSSwapConditioning", "noise_seed", bs.MODES.index(page.mode) + 1)])
    page.run()
    page.page.wait_for_function(
        "Array.from(document.querySelectorAll('[data-shapefirst=\"token-table\"]')).filter(e => e.dataset.rows === '77').length === 2",
        timeout=60_000)
    _assert_no_overlaps(page, output_dir, name)


def test_fig1_attention_view_scrubs_tokens_and_steps_inside_its_node(page, output_dir):
    name = "fig1_attention_maps_over_steps"
    shipped = json.loads((WORKFLOWS / f"{name}.json").read_text())
    page.load_template(name)
    output = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert output == workflow_tools.ui_to_api(shipped, page.srv.get_json("/object_info"))
    # a prompt with markup: labels must arrive as text, never as elements
    page.set_widgets(_small_run(page.srv.ckpt_name, steps=4) +
                     [("PrimitiveStringMultiline", "value", "a <img src=x onerror=window.pwned=1> mug")])
    page.run()
    page.wait_for_view("attention-view", "step")
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
    view_id = next(n["id"] for n in shipped["nodes"] if n["type"] == "AttentionMapView")
    _assert_inside_node(page, view_id, "attention-view")  # it once spilled below its node
    _assert_no_overlaps(page, output_dir, name)
    _shot(page, output_dir, name)


def _guidance_drawn(page, node_id) -> dict:
    return page.evaluate(
        """(id) => {
          const root = app.canvas.graph.getNodeById(id).shapefirstView.root;
          const c = root.querySelector('canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let coloured = 0;
          for (let i = 0; i < d.length; i += 4) {
            if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) coloured++;
          }
          return {coloured, steps: root.dataset.steps, points: root.dataset.points, text: root.textContent};
        }""", node_id)


def test_truncated_cfg_sampler_shows_its_report(page, output_dir):
    """The shipped fast txt2img workflow: the sampler's report is drawn in the node (the 0.3.75
    front end's Nodes 2.0 mode once never showed it: a widget added after the node was drawn)."""
    name = "fast_txt2img_truncated_cfg"
    page.load_template(name)
    page.set_widgets(_small_run(page.srv.ckpt_name, steps=4))
    entry = page.run()
    page.wait_for_view("guidance", "steps")
    node_id = page.evaluate("app.graph.nodes.find(n => n.type === 'TruncatedCFGSampler').id")
    report = entry["outputs"][str(node_id)]["shapefirst_guidance"][0]
    _assert_inside_node(page, node_id, "guidance")
    drawn = _guidance_drawn(page, node_id)
    assert drawn["steps"] == str(report["steps"]) and drawn["points"] == str(len(report["curve"]))
    assert len(report["curve"]) >= 1 and drawn["coloured"] > 100
    assert f"{report['steps']} steps" in drawn["text"]
    _shot(page, output_dir, name)


def test_shipped_guider_workflow_shows_the_guider_report(page, output_dir):
    """The shipped Truncated CFG Guider workflow, loaded from the pack's templates and queued with core
    SamplerCustomAdvanced: the guider does not run after sampling, so its report arrives as an event
    and must be drawn in the guider node."""
    name = "custom_sampler_truncated_cfg_guider"
    shipped = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert page.load_template(name) == shipped
    output = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert output == workflow_tools.ui_to_api(shipped, page.srv.get_json("/object_info"))
    assert {"TruncatedCFGGuider", "SamplerCustomAdvanced"} <= {n["class_type"] for n in output.values()}
    seed = 100 + bs.MODES.index(page.mode)  # a new run per page: a cached guider sends no report
    page.set_widgets(_small_run(page.srv.ckpt_name, steps=4) + [("BasicScheduler", "steps", 4),
                                                                ("RandomNoise", "noise_seed", seed)])
    page.run()
    node_id = next(n["id"] for n in shipped["nodes"] if n["type"] == "TruncatedCFGGuider")
    page.page.wait_for_function(
        "(id) => app.graph.getNodeById(id).shapefirstView?.root.dataset.steps !== undefined", arg=node_id,
        timeout=60_000)
    _assert_inside_node(page, node_id, "guidance")
    drawn = _guidance_drawn(page, node_id)
    assert drawn["steps"] == "4" and int(drawn["points"]) >= 1 and drawn["coloured"] > 100, drawn
    assert "4 steps" in drawn["text"] and "conditional passes skipped" in drawn["text"], drawn
    saved = float(page.evaluate("(id) => app.graph.getNodeById(id).shapefirstView.root.dataset.saved", node_id))
    assert 0 < saved < 50  # the first 40% of 4 steps guided: some conditional passes skipped, not all
    _assert_no_overlaps(page, output_dir, name)
    _shot(page, output_dir, name)


GUIDER_GRAPH_JS = """async ([ckpt, seed]) => {
  app.graph.clear();
  const graph = app.graph;
  const add = (type, x, y, values = {}) => {
    const n = LiteGraph.createNode(type);
    n.pos = [x, y];
    graph.add(n);
    for (const [k, v] of Object.entries(values)) {
      const w = n.widgets.find(w => w.name === k); w.value = v; w.callback?.(v);
    }
    return n;
  };
  const link = (a, out, b, input) => a.connect(a.findOutputSlot(out), b, b.findInputSlot(input));
  const loader = add('CheckpointLoaderSimple', 0, 0, {ckpt_name: ckpt});
  const pos = add('CLIPTextEncode', 350, 0, {text: 'a red cube'});
  const neg = add('CLIPTextEncode', 350, 250, {text: ''});
  const latent = add('EmptyLatentImage', 350, 500, {width: 64, height: 64});
  const guider = add('TruncatedCFGGuider', 750, 0, {cfg: 7.0, guidance_end: 0.5});
  const noise = add('RandomNoise', 750, 600, {noise_seed: seed});
  const select = add('KSamplerSelect', 750, 750, {sampler_name: 'euler'});
  const sched = add('BasicScheduler', 750, 850, {steps: 4});
  const sampler = add('SamplerCustomAdvanced', 1200, 0);
  const decode = add('VAEDecode', 1550, 0);
  const preview = add('PreviewImage', 1800, 0);
  link(loader, 'CLIP', pos, 'clip'); link(loader, 'CLIP', neg, 'clip');
  link(loader, 'MODEL', guider, 'model'); link(pos, 'CONDITIONING', guider, 'positive');
  link(neg, 'CONDITIONING', guider, 'negative'); link(loader, 'MODEL', sched, 'model');
  link(noise, 'NOISE', sampler, 'noise'); link(guider, 'GUIDER', sampler, 'guider');
  link(select, 'SAMPLER', sampler, 'sampler'); link(sched, 'SIGMAS', sampler, 'sigmas');
  link(latent, 'LATENT', sampler, 'latent_image'); link(sampler, 'output', decode, 'samples');
  link(loader, 'VAE', decode, 'vae'); link(decode, 'IMAGE', preview, 'images');
  // a person selects the guider and its sampler and converts them to a subgraph
  const made = graph.convertToSubgraph(new Set([guider, sampler]));
  const wrapper = made?.node ?? graph.nodes.find(n => n.isSubgraphNode?.());
  const inner = wrapper.subgraph.nodes.find(n => n.type === 'TruncatedCFGGuider');
  app.graph.setDirtyCanvas(true, true);
  return {wrapper: wrapper.id, guider: inner.id, subgraph: wrapper.subgraph.id};
}"""


def test_guider_inside_a_subgraph_shows_its_report(page, output_dir):
    """The guider's report arrives as an event naming the node by execution id ("12:4" inside a
    subgraph); it must reach the guider inside the subgraph (it once looked the id up on the root
    graph with Number(), so a guider in a subgraph never showed its report)."""
    seed = bs.MODES.index(page.mode) + 7  # a new run per page: a cached guider sends no report
    ids = page.evaluate(GUIDER_GRAPH_JS, [page.srv.ckpt_name, seed])
    output = page.evaluate("async () => (await app.graphToPrompt()).output")
    exec_id = f"{ids['wrapper']}:{ids['guider']}"
    assert output[exec_id]["class_type"] == "TruncatedCFGGuider"  # the server sees the guider by its path
    page.run()
    page.page.wait_for_function(
        """(ids) => {
          const outer = (app.rootGraph ?? app.graph).getNodeById(ids.wrapper);
          return outer.subgraph.getNodeById(ids.guider).shapefirstView?.root.dataset.steps !== undefined;
        }""", arg=ids, timeout=60_000)
    # open the subgraph, as a person does, and look at the guider
    page.evaluate("""(ids) => {
        const outer = (app.rootGraph ?? app.graph).getNodeById(ids.wrapper);
        app.canvas.openSubgraph ? app.canvas.openSubgraph(outer.subgraph) : app.canvas.setGraph(outer.subgraph);
    }""", ids)
    page.page.wait_for_timeout(800)
    _assert_inside_node(page, ids["guider"], "guidance")
    drawn = _guidance_drawn(page, ids["guider"])
    assert drawn["steps"] == "4" and int(drawn["points"]) >= 1 and drawn["coloured"] > 100
    _shot(page, output_dir, "guider_in_subgraph")
