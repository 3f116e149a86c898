// ShapeFirst: helpers shared by the pack's views (element builder, file links, the DOM widget
// that holds a view, onExecuted chaining, nodes found by execution id through subgraphs) and
// the two tables shared with the Python side: ui_keys.json (what nodes send) and figures.json
// (every chart). Text from the server is only ever set with textContent, never parsed as HTML.
import { app } from "../../scripts/app.js";

async function loadJson(name) {
  const response = await fetch(new URL(`./${name}`, import.meta.url));
  if (!response.ok) throw new Error(`ShapeFirst: could not load ${name} (${response.status})`);
  return response.json();
}

export const [UI_KEYS, FIGURES] = await Promise.all([loadJson("ui_keys.json"), loadJson("figures.json")]);

// The node types that show the payload `kind` of ui_keys.json.
export const nodesOf = (kind) => new Set(UI_KEYS.nodes[kind] || []);

export function el(tag, css, text) {
  const e = document.createElement(tag);
  if (css) e.style.cssText = css;
  if (text !== undefined) e.textContent = String(text);
  return e;
}

export function viewUrl(file) {
  const params = new URLSearchParams({
    filename: String(file.filename), subfolder: String(file.subfolder || ""), type: String(file.type || "output"),
  });
  return `/api/view?${params.toString()}`;
}

export function fileLinks(container, files) {
  container.replaceChildren();
  for (const f of Array.isArray(files) ? files : []) {
    const a = el("a", "color:#8ab4f8;margin-right:8px", f.filename);
    a.href = viewUrl(f);
    a.target = "_blank";
    a.rel = "noopener";
    container.appendChild(a);
  }
}

// Views fill the space the classic canvas gives their widget; inside a Vue node (Nodes 2.0),
// where a DOM widget is as tall as its content, they keep their own height and never shrink.
const PLACEHOLDER_HEIGHT = 16;
const STYLE = `.shapefirst-view { height: 100%; }
[data-node-id] .shapefirst-view { height: var(--shapefirst-height); flex: 0 0 auto; }`;

function addStyle() {
  if (document.getElementById("shapefirst-style")) return;
  const style = el("style");
  style.id = "shapefirst-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

// A view inside `node`: a DOM widget made when the node is created (front ends that draw nodes
// with Vue do not always show a widget added later), showing one line until the node's first
// result, then `height` (canvas units in the classic canvas, CSS pixels in Vue nodes; long
// content scrolls inside it). `view.body` holds the content; `view.open()` shows it.
export function addView(node, name, kind, height, { width = 440, placeholder = "" } = {}) {
  addStyle();
  const root = el("div", "display:flex;flex-direction:column;width:100%;box-sizing:border-box;overflow:hidden;" +
    "font:11px sans-serif;color:#ccc");
  root.className = "shapefirst-view";
  root.dataset.shapefirst = kind;
  const note = el("div", "flex:0 0 auto;color:#888;font-style:italic;white-space:nowrap;overflow:hidden", placeholder);
  const body = el("div", "display:none;flex:1 1 0;min-height:0;flex-direction:column;gap:4px");
  root.append(note, body);
  const view = { root, body, widget: null, height: PLACEHOLDER_HEIGHT, opened: false };
  const full = () => view.height + 2 * (view.widget?.margin ?? 10);  // the widget's slot includes its margins
  view.widget = node.addDOMWidget(name, name, root, {
    serialize: false,
    hideOnZoom: false,
    getValue() { return undefined; },
    setValue() {},
    getMinHeight: full,
    getMaxHeight: full,
  });
  view.widget.serialize = false;
  const setHeight = (h) => {
    view.height = h;
    root.style.setProperty("--shapefirst-height", `${h}px`);
  };
  setHeight(PLACEHOLDER_HEIGHT);
  view.open = () => {
    if (view.opened) return;
    view.opened = true;
    note.style.display = "none";
    body.style.display = "flex";
    setHeight(height);
    const [w, h] = node.size;
    const min = node.computeSize?.() ?? [w, h];
    node.setSize([Math.max(w, min[0], width), Math.max(h, min[1])]);
    node.setDirtyCanvas?.(true, true);
  };
  return view;
}

// Call `handler(node)` when a node of this type is made (after the type's own onNodeCreated).
export function onNodeCreated(nodeType, handler) {
  const previous = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const result = previous?.apply(this, arguments);
    handler(this);
    return result;
  };
}

// Call `handler(node, message)` after the node type's own onExecuted (and any other extension's).
export function onExecuted(nodeType, handler) {
  const previous = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (message) {
    const result = previous?.apply(this, arguments);
    try {
      handler(this, message);
    } catch (error) {
      console.warn(`ShapeFirst: ${nodeType.comfyClass ?? "node"} could not show its output:`, error);
    }
    return result;
  };
}

// The node that ran under `executionId`: "12" on the root graph, "12:4" is node 4 inside the
// subgraph of node 12, and so on. Subgraphs are walked from the root graph, whichever graph the
// canvas shows.
export function nodeByExecutionId(executionId) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(executionId ?? "").split(":")) {
    if (!graph || part === "") return null;
    node = graph.getNodeById(part) ?? graph.getNodeById(Number(part));
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}
