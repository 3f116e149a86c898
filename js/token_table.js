// ShapeFirst: the token table of EOS Swap Conditioning, shown inside the node after it runs.
// Every position of the output: token, role ([SOS] / SEM / [EOS] / pad) and the row that fills it.
// The table scrolls inside a view of fixed height (77 rows per encoder would otherwise make the
// node about 1,600 units tall). Prompts come from strangers: text is set with textContent only.
import { app } from "../../scripts/app.js";
import { FIGURES, UI_KEYS, addView, el, nodesOf, onExecuted, onNodeCreated } from "./common.js";

const TABLE_NODES = nodesOf("tokens");
const HEIGHT = 260;
// a role is coloured as its token class in every chart (figures.json "classes")
const ROLE_CLASS = { "[SOS]": "SOS", SEM: "SEM", "[EOS]": "EOS", pad: "PAD" };
const roleColour = (role) => FIGURES.classes[ROLE_CLASS[role.split(" ")[0]]]?.color ?? "#bbb";
const SOURCE_COLOURS = { A: "#cfe3ff", B: "#ffd9b3", zeros: "#999", noise: "#c9a0ff" };

function ensureView(node) {
  if (node.shapefirstTokens) return node.shapefirstTokens;
  const view = addView(node, "shapefirst_tokens", "token-table", HEIGHT,
    { width: 420, placeholder: "token table: shown after a run" });
  view.title = el("div", "flex:0 0 auto;color:#aaa;white-space:normal");
  view.tables = el("div", "flex:1 1 0;min-height:0;overflow:auto;font:11px monospace");
  view.tables.dataset.scroll = "";
  view.body.append(view.title, view.tables);
  node.shapefirstTokens = view;
  return view;
}

function encoderTable(encoder) {
  const wrap = el("div");
  const names = Array.isArray(encoder?.names) ? encoder.names.map(String).join(", ") : "";
  wrap.append(el("div", "color:#ddd;margin-top:4px", names));
  const table = el("table", "border-collapse:collapse;width:100%");
  const head = el("tr");
  for (const h of ["pos", "token", "role", "source"]) head.append(el("th", "text-align:left;padding:0 6px 0 0;color:#999", h));
  table.append(head);
  for (const row of Array.isArray(encoder?.rows) ? encoder.rows : []) {
    if (!Array.isArray(row)) continue;
    const [pos, token, role, source] = row.map((v) => String(v ?? ""));
    const tr = el("tr");
    tr.dataset.role = role;
    tr.append(
      el("td", "padding:0 6px 0 0;color:#777", pos),
      el("td", "padding:0 6px 0 0;white-space:pre", token),
      el("td", `padding:0 6px 0 0;color:${roleColour(role)}`, role),
      el("td", `padding:0;color:${SOURCE_COLOURS[source.split(" ")[0]] ?? "#bbb"}`, source),
    );
    table.append(tr);
  }
  wrap.append(table);
  return wrap;
}

export function showTokenTable(node, payload) {
  const view = ensureView(node);
  view.open();
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
    onNodeCreated(nodeType, ensureView);
    onExecuted(nodeType, (node, message) => {
      const payload = message?.[UI_KEYS.ui.tokens]?.[0];
      if (payload) showTokenTable(node, payload);
    });
  },
});
