// ShapeFirst: the token table of EOS Swap Conditioning, shown inside the node after it runs.
// Every position of the output: token, role ([SOS] / SEM / [EOS] / pad) and the row that fills it.
// Prompts come from strangers: every piece of text is set with textContent, never as HTML.
import { app } from "../../scripts/app.js";

const TABLE_NODES = new Set(["EOSSwapConditioning"]);
const ROLE_COLOURS = { "[SOS]": "#8a8a8a", SEM: "#7fb8ff", "[EOS]": "#ffb36b" };
const SOURCE_COLOURS = { A: "#cfe3ff", B: "#ffd9b3", zeros: "#999", noise: "#c9a0ff" };

function el(tag, text, css) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (css) node.style.cssText = css;
  return node;
}

function ensureView(node) {
  if (node.shapefirstTokens) return node.shapefirstTokens;
  const root = el("div", undefined,
    "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;overflow:auto;font:11px monospace;color:#ccc");
  root.dataset.shapefirst = "token-table";
  const title = el("div", undefined, "font:11px sans-serif;color:#aaa;white-space:normal");
  const tables = el("div");
  root.append(title, tables);
  const widget = node.addDOMWidget("shapefirst_tokens", "shapefirst_token_table", root, {
    serialize: false,
    hideOnZoom: false,
    getValue() { return undefined; },
    setValue() {},
    getMinHeight() { return 240; },
  });
  widget.serialize = false;
  node.shapefirstTokens = { root, title, tables, widget };
  // grow the node so the table gets its own space below the inputs
  const [w, h] = node.size;
  const min = node.computeSize?.() ?? [w, h];
  node.setSize([Math.max(w, min[0], 420), Math.max(h, min[1])]);
  return node.shapefirstTokens;
}

function encoderTable(encoder) {
  const wrap = el("div");
  const names = Array.isArray(encoder?.names) ? encoder.names.map(String).join(", ") : "";
  wrap.append(el("div", names, "color:#ddd;margin-top:4px"));
  const table = el("table", undefined, "border-collapse:collapse;width:100%");
  const head = el("tr");
  for (const h of ["pos", "token", "role", "source"]) head.append(el("th", h, "text-align:left;padding:0 6px 0 0;color:#999"));
  table.append(head);
  for (const row of Array.isArray(encoder?.rows) ? encoder.rows : []) {
    if (!Array.isArray(row)) continue;
    const [pos, token, role, source] = row.map((v) => String(v ?? ""));
    const tr = el("tr");
    tr.dataset.role = role;
    const kind = source.split(" ")[0];
    tr.append(
      el("td", pos, "padding:0 6px 0 0;color:#777"),
      el("td", token, "padding:0 6px 0 0;white-space:pre"),
      el("td", role, `padding:0 6px 0 0;color:${ROLE_COLOURS[role.split(" ")[0]] ?? "#bbb"}`),
      el("td", source, `padding:0;color:${SOURCE_COLOURS[kind] ?? "#bbb"}`),
    );
    table.append(tr);
  }
  wrap.append(table);
  return wrap;
}

export function showTokenTable(node, payload) {
  const view = ensureView(node);
  view.title.textContent = String(payload?.title ?? "");
  const encoders = Array.isArray(payload?.encoders) ? payload.encoders : [];
  view.tables.replaceChildren(...encoders.map(encoderTable));
  view.root.dataset.rows = String(encoders.reduce((n, e) => n + (Array.isArray(e?.rows) ? e.rows.length : 0), 0));
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "ShapeFirst.tokenTable",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TABLE_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const payload = message?.shapefirst_tokens?.[0];
      if (payload) showTokenTable(this, payload);
    };
  },
});
