// ShapeFirst: the curves of Frequency Curves (Fig. 2b/2c) and the truncated-guidance report
// (Fig. 8b) inside their nodes. The sampler sends its report as the node's output; a guider or a
// model patch does not run after sampling, so it sends its report as an event naming its node
// (an execution id, "12:4" inside a subgraph).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawFigure } from "./chart.js";
import { UI_KEYS, addView, el, fileLinks, nodeByExecutionId, nodesOf, onExecuted, onNodeCreated } from "./common.js";

const CURVE_NODES = nodesOf("curves");
const GUIDANCE_NODES = nodesOf("guidance");
const CANVAS_WIDTH = 420;

const KINDS = {
  "frequency-curves": { height: 600, placeholder: "Fig. 2b/2c curves: shown after a run" },
  guidance: { height: 360, placeholder: "Fig. 8b guidance report: shown after a run" },
};

function ensureView(node, kind) {
  if (node.shapefirstView) return node.shapefirstView;
  const { height, placeholder } = KINDS[kind];
  const view = addView(node, "shapefirst_chart", kind, height + 64, { placeholder });
  view.canvas = el("canvas", "width:100%;height:auto;flex:0 1 auto;min-height:0;object-fit:contain;object-position:top left");
  view.canvas.width = CANVAS_WIDTH;
  view.canvas.height = height;
  view.summary = el("div", "flex:0 0 auto");
  view.files = el("div", "flex:0 0 auto");
  view.body.append(view.canvas, view.summary, view.files);
  node.shapefirstView = view;
  return view;
}

export function showFrequencyCurves(node, data) {
  const view = ensureView(node, "frequency-curves");
  view.open();
  const panels = drawFigure(view.canvas, "frequency_curves", data);
  view.root.dataset.steps = String(data.steps ?? 0);
  view.root.dataset.series = String(panels.reduce((n, p) => n + p.series.filter((s) => s.values.length).length, 0));
  view.summary.textContent = `${data.steps} steps, low band = lowest ${Math.round((data.low_fraction ?? 0) * 100)}% of the spectrum`;
  fileLinks(view.files, data.files);
  node.setDirtyCanvas(true, true);
}

export function showGuidance(node, report) {
  const view = ensureView(node, "guidance");
  view.open();
  const panels = drawFigure(view.canvas, "guidance", report);
  const saved = (100 * (Number(report.saved_fraction) || 0)).toFixed(1);
  const stop = report.stop_step == null ? "" : `, adaptive stop at step ${report.stop_step}`;
  view.root.dataset.steps = String(report.steps ?? 0);
  view.root.dataset.saved = saved;
  view.root.dataset.points = String(panels[0].series[0]?.values.length ?? 0);
  view.summary.textContent =
    `${report.steps} steps, ${report.evaluations} model evaluations, ${report.guided_evaluations} guided, ` +
    `${report.skipped_passes} conditional passes skipped: ${saved}% of the UNet work saved${stop}`;
  view.files.replaceChildren();
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "ShapeFirst.views",
  setup() {
    api.addEventListener(UI_KEYS.events.guidance, (event) => {
      const node = nodeByExecutionId(event.detail?.node);
      if (node && GUIDANCE_NODES.has(node.comfyClass ?? node.type) && event.detail.report) {
        showGuidance(node, event.detail.report);
      }
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (CURVE_NODES.has(nodeData.name)) {
      onNodeCreated(nodeType, (node) => ensureView(node, "frequency-curves"));
      onExecuted(nodeType, (node, message) => {
        const curves = message?.[UI_KEYS.ui.curves]?.[0];
        if (curves) showFrequencyCurves(node, curves);
      });
    }
    if (GUIDANCE_NODES.has(nodeData.name)) {
      onNodeCreated(nodeType, (node) => ensureView(node, "guidance"));
      onExecuted(nodeType, (node, message) => {
        const report = message?.[UI_KEYS.ui.guidance]?.[0];
        if (report) showGuidance(node, report);
      });
    }
  },
});
