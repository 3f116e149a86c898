// ShapeFirst front-end extension: draws the curves that ShapeFirst nodes send in their "ui"
// payload inside the node. Text from the server (labels, file names) is only ever set with
// textContent or drawn on a canvas, never parsed as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawPanels } from "./chart.js";

const CURVE_NODES = new Set(["FrequencyCurves"]);
const GUIDANCE_NODES = new Set(["TruncatedCFGSampler", "TruncatedCFGGuider"]);

function frequencyPanels(data) {
  const c = data.curves || {};
  const s = (label, key, dashed = false) => ({ label, values: (c[key] || []).map(Number), dashed });
  return [
    {
      title: "Fig. 2b: forward noising, RMS",
      series: [s("a_t x0 low", "forward_signal_low"), s("a_t x0 high", "forward_signal_high"),
               s("b_t eps low", "forward_noise_low", true), s("b_t eps high", "forward_noise_high", true)],
    },
    {
      title: "Fig. 2c: |x_t - x0| / |x0| per band",
      series: [s("denoise low", "ratio_denoise_low"), s("denoise high", "ratio_denoise_high"),
               s("forward low", "ratio_forward_low", true), s("forward high", "ratio_forward_high", true)],
    },
  ];
}

function fileLinks(container, files) {
  container.replaceChildren();
  for (const f of files || []) {
    const a = document.createElement("a");
    const params = new URLSearchParams({ filename: String(f.filename), subfolder: String(f.subfolder || ""), type: "output" });
    a.href = `/api/view?${params.toString()}`;
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = String(f.filename);
    a.style.cssText = "color:#8ab4f8;margin-right:8px";
    container.appendChild(a);
  }
}

function guidancePanels(report) {
  const curve = report.curve || [];
  const byStep = (key) => {
    const values = new Array(report.steps || 0).fill(NaN);
    for (const p of curve) values[p.step] = Number(p[key]);
    return values;
  };
  return [
    {
      title: "Fig. 8b: guidance strength per step (while guidance is on)",
      series: [{ label: "RMS eps_uncond (x sigma)", values: byStep("rms_uncond") },
               { label: "RMS w (eps_c - eps_u) (x sigma)", values: byStep("rms_guidance") }],
    },
    { title: "relative strength |w (eps_c - eps_u)| / |eps_u|", series: [{ label: "ratio", values: byStep("ratio") }] },
  ];
}

export function showGuidance(node, report) {
  const view = ensureView(node, "guidance", 360);
  drawPanels(view.canvas, guidancePanels(report));
  const saved = (100 * (report.saved_fraction || 0)).toFixed(1);
  const stop = report.stop_step == null ? "" : `, adaptive stop at step ${report.stop_step}`;
  view.root.dataset.steps = String(report.steps ?? 0);
  view.root.dataset.saved = saved;
  view.summary.textContent =
    `${report.steps} steps, ${report.evaluations} model evaluations, ${report.guided_evaluations} guided, ` +
    `${report.skipped_passes} conditional passes skipped: ${saved}% of the UNet work saved${stop}`;
  view.files.replaceChildren();
  node.setDirtyCanvas(true, true);
}

function ensureView(node, kind = "frequency-curves", height = 420) {
  if (node.shapefirstView) return node.shapefirstView;
  const root = document.createElement("div");
  root.dataset.shapefirst = kind;
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;font:11px sans-serif;color:#ccc";
  const canvas = document.createElement("canvas");
  canvas.width = 420;
  canvas.height = height;
  canvas.style.cssText = "width:100%;flex:1 1 auto;min-height:0";
  const summary = document.createElement("div");
  const files = document.createElement("div");
  root.append(canvas, summary, files);
  const widget = node.addDOMWidget("shapefirst_curves", "shapefirst_chart", root, {
    serialize: false,
    hideOnZoom: false,
    getValue() { return undefined; },
    setValue() {},
  });
  widget.serialize = false;
  node.shapefirstView = { root, canvas, summary, files, widget };
  const [w, h] = node.size;
  node.setSize([Math.max(w, 440), Math.max(h, height + 220)]);
  return node.shapefirstView;
}

export function showFrequencyCurves(node, data) {
  const view = ensureView(node);
  const panels = frequencyPanels(data);
  drawPanels(view.canvas, panels);
  view.root.dataset.steps = String(data.steps ?? 0);
  view.root.dataset.series = String(panels.reduce((n, p) => n + p.series.filter((s) => s.values.length).length, 0));
  view.summary.textContent = `${data.steps} steps, low band = lowest ${Math.round((data.low_fraction ?? 0) * 100)}% of the spectrum`;
  fileLinks(view.files, data.files);
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "ShapeFirst.views",
  setup() {
    // a GUIDER does not run after sampling: its report arrives as its own message
    api.addEventListener("shapefirst.guidance", (event) => {
      const node = app.graph.getNodeById(Number(event.detail?.node));
      if (node && event.detail.report) showGuidance(node, event.detail.report);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!CURVE_NODES.has(nodeData.name) && !GUIDANCE_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const curves = message?.shapefirst_curves?.[0];
      if (curves) showFrequencyCurves(this, curves);
      const report = message?.shapefirst_guidance?.[0];
      if (report) showGuidance(this, report);
    };
  },
});
