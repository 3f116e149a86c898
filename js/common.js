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
const STYLE = `.shapefirst-view { height: 100%; }
[data-node-id] .shapefirst-view { height: var(--shapefirst-height); flex: 0 0 auto; }`;

function addStyle() {
  if (document.getElementById("shapefirst-style")) return;
  const style = el("style");
  style.id = "shapefirst-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

// The view's root element for `node`, made once: a DOM widget of a fixed height in both node
// modes. Long content scrolls inside the view, the node grows to hold it.
export function addView(node, name, kind, height, width = 440) {
  addStyle();
  const root = el("div", `--shapefirst-height:${height}px;display:flex;flex-direction:column;gap:4px;width:100%;` +
    "box-sizing:border-box;overflow:hidden;font:11px sans-serif;color:#ccc");
  root.className = "shapefirst-view";
  root.dataset.shapefirst = kind;
  let widget = null;
  const full = () => height + 2 * (widget?.margin ?? 10);  // the widget's slot includes its margins
  widget = node.addDOMWidget(name, name, root, {
    serialize: false,
    hideOnZoom: false,
    getValue() { return undefined; },
    setValue() {},
    getMinHeight: full,
    getMaxHeight: full,
  });
  widget.serialize = false;
  const [w, h] = node.size;
  const min = node.computeSize?.() ?? [w, h];
  node.setSize([Math.max(w, min[0], width), Math.max(h, min[1])]);
  node.setDirtyCanvas?.(true, true);
  return { root, widget };
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
