"""Helpers of the browser tests: a ComfyUI server per front end, a page per node mode, the
page scripts that load, edit and run workflows, and the geometry of the pack's views.

Front ends: ``pinned`` is the one ComfyUI 0.3.75 installs; newer ones are installed once by
``devtools.frontends`` into the runtime folder. Modes: ``classic`` (LiteGraph canvas) and
``vue`` (the front end's Nodes 2.0 mode, the user setting ``Comfy.VueNodes.Enabled``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from devtools import server as comfy_server

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SHAPEFIRST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODES = ("classic", "vue")
PACK = comfy_server.PACK_DIR_NAME
# Console lines of the 0.3.75 backend's gap to newer front ends and of the closed network: not the pack's.
NOISE = re.compile(r"/api/jobs|/api/userdata|ERR_NAME_NOT_RESOLVED|ERR_CONNECTION_REFUSED|ERR_INTERNET_DISCONNECTED|"
                   r"ERR_ADDRESS_UNREACHABLE|ERR_NETWORK_CHANGED", re.I)


def pack_lines(lines: list[str]) -> list[str]:
    """The console lines that mention the pack (its messages, its files in a stack or as the source),
    without the known noise; a line naming one of the pack's own files always counts."""
    own = f"/extensions/{PACK}/"
    return [line for line in lines if re.search(r"shapefirst", line, re.I)
            and (own in line or not NOISE.search(line))]


class FrontendServer(comfy_server.ComfyServer):
    """ComfyServer serving a chosen front end (``--front-end-root``); None keeps the pinned one."""

    def __init__(self, *args, front_end_root: Path | None = None, **kwargs):
        extra = ["--front-end-root", str(front_end_root)] if front_end_root is not None else []
        super().__init__(*args, extra_args=extra, **kwargs)
        self.front_end_root = front_end_root


def wait_for_history(srv, count: int, timeout: float = 180.0) -> dict:
    """The server's history once ``count`` prompts have finished (success or error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            history = srv.get_json("/history")
        except OSError:  # a busy server (2 shared cores) may answer late: ask again
            time.sleep(1.0)
            continue
        done = [h for h in history.values() if h.get("status", {}).get("completed") is not None]
        if len(done) >= count and len(done) == len(history):
            return history
        time.sleep(0.5)
    raise AssertionError(f"{count} prompts not finished after {timeout}s:\n{srv.log_tail()}")


class PackPage:
    """One browser page on one server in one node mode, with the console lines it logged."""

    def __init__(self, browser, srv, mode: str, frontend: str):
        self.srv, self.mode, self.frontend = srv, mode, frontend
        srv.post_json("/settings", {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": mode == "vue"})
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(
            f"{msg.type}: {msg.text} (at {(msg.location or {}).get('url', '')})"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc.message}\n{exc.stack}"))
        self.page.goto(srv.url)
        self.page.wait_for_function("window.app && window.app.graph && window.app.extensionManager", timeout=90_000)
        self.page.wait_for_timeout(500)
        self.prompts = len(srv.get_json("/history"))

    def pack_console_lines(self) -> list[str]:
        """Console lines and uncaught errors that mention the pack (its messages, its files in a
        stack or as the source), without the known noise."""
        return pack_lines(self.console)

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def load_workflow(self, workflow: dict) -> None:
        self.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
        self.page.wait_for_timeout(300)

    def load_template(self, name: str) -> dict:
        """Load a shipped workflow the way a person does (from the pack's templates); returns it as served."""
        return self.evaluate(
            """async ([pack, name]) => {
              const r = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
              const wf = await r.json();
              await app.loadGraphData(wf);
              return wf;
            }""", [PACK, name])

    def set_widgets(self, settings: list[tuple]) -> None:
        """Set widget ``name`` of every node of ``type`` (in every graph) to ``value``, as a person would."""
        self.evaluate(
            """(settings) => {
              const graphs = [app.rootGraph ?? app.graph, ...(app.rootGraph ?? app.graph).subgraphs?.values?.() ?? []];
              for (const [type, name, value] of settings) {
                for (const g of graphs) for (const n of g.nodes.filter(n => n.type === type)) {
                  const w = n.widgets?.find(w => w.name === name);
                  if (w) { w.value = value; w.callback?.(value); }
                }
              }
              app.graph.setDirtyCanvas(true, true);
            }""", [list(x) for x in settings])

    def run(self, timeout: float = 240.0) -> dict:
        """Queue the graph with the Run button; wait until the server finished it; its history entry."""
        self.page.get_by_role("button", name="Run", exact=True).first.click()
        self.prompts += 1
        history = wait_for_history(self.srv, self.prompts, timeout)
        entry = sorted(history.values(), key=lambda h: h["prompt"][0])[-1]
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        return entry

    def wait_for_view(self, kind: str, attribute: str, count: int = 1, timeout: float = 60_000) -> None:
        self.page.wait_for_function(
            """([kind, attribute, count]) => {
              const roots = Array.from(document.querySelectorAll(`[data-shapefirst="${kind}"]`));
              return roots.filter(r => r.dataset[attribute] !== undefined).length >= count;
            }""", arg=[kind, attribute, count], timeout=timeout)

    def show_node(self, node_id) -> None:
        """Centre the canvas on a node of the graph shown, at scale 1, and let the page draw."""
        self.evaluate(
            """(id) => {
              const node = app.canvas.graph.getNodeById(id);
              app.canvas.ds.scale = 1;
              app.canvas.centerOnNode(node);
              app.canvas.setDirty(true, true);
            }""", node_id)
        self.page.wait_for_timeout(600)

    def view_geometry(self, node_id, kind: str) -> dict:
        """Screen rectangles of a node (its Vue element, or its canvas box) and of its view, in CSS px,
        with the canvas scale; plus the view's scroll sizes."""
        return self.evaluate(GEOMETRY_JS, [node_id, kind])

    def node_boxes(self) -> list[dict]:
        """The box of every node of the graph shown, in canvas units, once the page's images have
        loaded (an image preview makes a Vue node taller), at scale 1 (a smaller scale may draw
        Vue nodes in less detail)."""
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
        self.evaluate("""() => {
            const nodes = app.canvas.graph.nodes;
            const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1]));
            app.canvas.ds.scale = 1;
            app.canvas.ds.offset = [40 - left, 80 - top];
            app.canvas.setDirty(true, true);
        }""")
        self.page.wait_for_timeout(1000)
        return self.evaluate(NODE_BOXES_JS)

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        self.page.close()


GEOMETRY_JS = """([id, kind]) => {
  const node = app.canvas.graph.getNodeById(id);
  const view = Array.from(document.querySelectorAll(`[data-shapefirst="${kind}"]`))
    .find(e => e.isConnected && (node.widgets || []).some(w => w.element === e));
  const rect = (r) => ({left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height});
  const scale = app.canvas.ds.scale;
  let nodeRect;
  const vueEl = document.querySelector(`[data-node-id="${id}"]`);
  if (vueEl) nodeRect = rect(vueEl.getBoundingClientRect());
  else {
    const c = app.canvas.canvas.getBoundingClientRect();
    const [ox, oy] = app.canvas.ds.offset;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const left = c.left + (node.pos[0] + ox) * scale, top = c.top + (node.pos[1] - title + oy) * scale;
    nodeRect = {left, top, right: left + node.size[0] * scale, bottom: top + (node.size[1] + title) * scale,
                width: node.size[0] * scale, height: (node.size[1] + title) * scale};
  }
  const scroller = view?.querySelector('[data-scroll]');
  const style = view ? getComputedStyle(view) : null;
  return {vue: Boolean(vueEl), scale, node: nodeRect, view: view ? rect(view.getBoundingClientRect()) : null,
          visible: Boolean(view) && style.display !== 'none' && style.visibility !== 'hidden',
          scroll: scroller ? {client: scroller.clientHeight, scroll: scroller.scrollHeight} : null};
}"""


def inside(inner: dict, outer: dict, tol: float = 2.0) -> bool:
    return (inner["left"] >= outer["left"] - tol and inner["top"] >= outer["top"] - tol
            and inner["right"] <= outer["right"] + tol and inner["bottom"] <= outer["bottom"] + tol)


# Every node of the graph shown, as a box in canvas units (title bar included): in Nodes 2.0 the
# box of the node's element on the page, in the classic canvas the box LiteGraph draws.
NODE_BOXES_JS = """() => {
  const canvas = app.canvas, scale = canvas.ds.scale, [ox, oy] = canvas.ds.offset;
  const c = canvas.canvas.getBoundingClientRect();
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  return canvas.graph.nodes.map((node) => {
    const el = document.querySelector(`[data-node-id="${node.id}"]`);
    let box;
    if (el) {
      const r = el.getBoundingClientRect();
      box = [(r.left - c.left) / scale - ox, (r.top - c.top) / scale - oy, r.width / scale, r.height / scale];
    } else {
      box = [node.pos[0], node.pos[1] - title, node.size[0], node.size[1] + title];
    }
    return {id: node.id, type: node.type, title: node.title, vue: Boolean(el), box};
  });
}"""


def overlaps(boxes: list[dict], tol: float = 1.0) -> list[str]:
    """Pairs of node boxes (``[x, y, w, h]``) that share more than ``tol`` units both ways."""
    found = []
    for i, a in enumerate(boxes):
        ax, ay, aw, ah = a["box"]
        for b in boxes[i + 1:]:
            bx, by, bw, bh = b["box"]
            dx = min(ax + aw, bx + bw) - max(ax, bx)
            dy = min(ay + ah, by + bh) - max(ay, by)
            if dx > tol and dy > tol:
                found.append(f"{a['type']} {a['id']} {[round(v) for v in a['box']]} overlaps "
                             f"{b['type']} {b['id']} {[round(v) for v in b['box']]} by {dx:.0f} x {dy:.0f}")
    return found
