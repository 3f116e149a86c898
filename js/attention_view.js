// ShapeFirst: attention maps inside the Attention Map View node (a token selector and a step
// slider over the captured maps, drawn over the sampled image) and the curves of Attention Map
// View and Attention Map Compare. Server and prompt text (token labels, file names) is only set
// with textContent or drawn on a canvas, never parsed as HTML.
import { app } from "../../scripts/app.js";
import { drawFigure } from "./chart.js";
import { UI_KEYS, addView, el, fileLinks, nodesOf, onExecuted, onNodeCreated, viewUrl } from "./common.js";

const VIEW_NODES = nodesOf("attention");
const COMPARE_NODES = nodesOf("attention_kl");
const RAMP = [[0, 0, 5], [66, 10, 105], [148, 38, 102], [222, 82, 59], [250, 153, 10], [252, 252, 163]];
// Heights of the whole view: everything is scaled into it, nothing spills below the node.
const KINDS = {
  "attention-view": { height: 760, placeholder: "attention maps and Fig. 1b/3 curves: shown after a run" },
  "attention-compare": { height: 300, placeholder: "Fig. 16 KL curves: shown after a run" },
};

function loadImage(f) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = viewUrl(f);
  });
}

function ramp(v) {
  const x = Math.min(1, Math.max(0, v)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  return RAMP[i].map((a, k) => Math.round(a * (1 - f) + RAMP[i + 1][k] * f));
}

function ensureView(node, kind) {
  if (node.shapefirstAttention) return node.shapefirstAttention;
  const view = addView(node, "shapefirst_attention", kind, KINDS[kind].height, { placeholder: KINDS[kind].placeholder });
  const controls = el("div", "flex:0 0 auto;display:flex;gap:6px;align-items:center;flex-wrap:wrap");
  const select = el("select", "max-width:55%;background:#222;color:#ddd");
  const slider = el("input", "flex:1 1 80px");
  slider.type = "range";
  slider.min = "0";
  slider.step = "1";
  const stepLabel = el("span", "min-width:90px");
  controls.append(el("span", "", "token"), select, el("span", "", "step"), slider, stepLabel);
  const fit = "width:100%;min-height:0;object-fit:contain;object-position:top left";
  const mapCanvas = el("canvas", `${fit};flex:1 1 0;background:#111`);
  mapCanvas.width = 320;
  mapCanvas.height = 320;
  const chartCanvas = el("canvas", `${fit};flex:1 1 0`);
  chartCanvas.width = 420;
  chartCanvas.height = kind === "attention-view" ? 420 : 240;
  const summary = el("div", "flex:0 0 auto");
  const files = el("div", "flex:0 0 auto");
  if (kind === "attention-view") view.body.append(controls, mapCanvas);
  view.body.append(chartCanvas, summary, files);
  Object.assign(view, { select, slider, stepLabel, mapCanvas, chartCanvas, summary, files, data: null });
  select.addEventListener("change", () => drawMap(view));
  slider.addEventListener("input", () => drawMap(view));
  node.shapefirstAttention = view;
  return view;
}

// Draw the selected token's map at the selected step over the picture.
export function drawMap(view) {
  const d = view.data;
  if (!d || !view.sprite || !view.picture) return;
  const row = Number(view.select.value) || 0;
  const col = Number(view.slider.value) || 0;
  const [ch, cw] = d.cell;
  const canvas = view.mapCanvas;
  const pic = view.picture;
  canvas.height = Math.round(canvas.width * pic.height / pic.width);
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(pic, 0, 0, canvas.width, canvas.height);
  const off = document.createElement("canvas");
  off.width = cw;
  off.height = ch;
  const octx = off.getContext("2d");
  octx.drawImage(view.sprite, col * cw, row * ch, cw, ch, 0, 0, cw, ch);
  const px = octx.getImageData(0, 0, cw, ch);
  for (let i = 0; i < px.data.length; i += 4) {
    const [r, g, b] = ramp(px.data[i] / 255);
    px.data[i] = r; px.data[i + 1] = g; px.data[i + 2] = b; px.data[i + 3] = 255;
  }
  octx.putImageData(px, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.globalAlpha = 0.6;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
  const step = d.sprite_steps[col];
  view.stepLabel.textContent = `step ${step} of ${d.total_steps}`;
  view.root.dataset.token = String(d.sprite_rows[row]);
  view.root.dataset.step = String(step);
}

export async function showAttentionView(node, d) {
  const view = ensureView(node, "attention-view");
  view.open();
  view.data = d;
  view.select.replaceChildren();
  d.sprite_rows.forEach((pos, k) => {
    const t = d.tokens[pos] || {};
    view.select.appendChild(Object.assign(el("option", "", `${pos}: ${t.label ?? "?"} (${t.role ?? "?"})`), { value: String(k) }));
  });
  view.slider.max = String(Math.max(0, d.sprite_steps.length - 1));
  view.slider.value = view.slider.max;
  drawFigure(view.chartCanvas, "attention_view", d);
  view.summary.textContent = `${d.steps.length} of ${d.total_steps} steps recorded, ${d.tokens.length} tokens, grid ${d.grid.join("x")}, ${d.layers.length} cross-attention layers`;
  view.root.dataset.steps = String(d.steps.length);
  fileLinks(view.files, d.files);
  [view.sprite, view.picture] = await Promise.all([loadImage(d.sprite), loadImage(d.picture)]);
  drawMap(view);
  node.setDirtyCanvas(true, true);
}

export function showAttentionCompare(node, d) {
  const view = ensureView(node, "attention-compare");
  view.open();
  drawFigure(view.chartCanvas, "attention_kl", d);
  view.summary.textContent = `${d.steps.length} common steps, ${d.branch} branch`;
  view.root.dataset.steps = String(d.steps.length);
  fileLinks(view.files, d.files);
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "ShapeFirst.attention",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (VIEW_NODES.has(nodeData.name)) {
      onNodeCreated(nodeType, (node) => ensureView(node, "attention-view"));
      onExecuted(nodeType, (node, message) => {
        const view = message?.[UI_KEYS.ui.attention]?.[0];
        if (view) showAttentionView(node, view).catch((e) => console.warn("ShapeFirst attention view:", e));
      });
    }
    if (COMPARE_NODES.has(nodeData.name)) {
      onNodeCreated(nodeType, (node) => ensureView(node, "attention-compare"));
      onExecuted(nodeType, (node, message) => {
        const kl = message?.[UI_KEYS.ui.attention_kl]?.[0];
        if (kl) showAttentionCompare(node, kl);
      });
    }
  },
});
