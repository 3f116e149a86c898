// ShapeFirst: line charts drawn on a canvas inside nodes, from the figure descriptions of
// figures.json (the same ones shapefirst/chart.py draws the IMAGE outputs from). No HTML is built
// from data: labels are drawn with fillText, so prompt or file text can never become markup.
import { FIGURES } from "./common.js";

export const PALETTE = FIGURES.palette;
// One colour, marker and line style per token class in every chart (and in the token table).
export const CLASSES = FIGURES.classes;
const HOLLOW = new Set(["circle", "diamond"]);  // drawn larger and last, so a filled marker shows inside

function niceTicks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi <= lo) hi = lo + (Math.abs(lo) || 1);
  const raw = (hi - lo) / Math.max(1, count - 1);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks = [];
  for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-6; t += step) ticks.push(+t.toPrecision(12));
  if (ticks[ticks.length - 1] < hi) ticks.push(+(ticks[ticks.length - 1] + step).toPrecision(12));
  return ticks;
}

function fmt(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000 || Math.abs(v) < 0.01) return v.toExponential(1);
  return String(+v.toPrecision(3));
}

// The value at a dotted path of the payload (undefined where a part is missing).
function at(payload, path) {
  return String(path).split(".").reduce((v, k) => (v && typeof v === "object" ? v[k] : undefined), payload);
}

const numbers = (values) => (Array.isArray(values) ? values : []).map((v) => (v === null ? NaN : Number(v)));

function resolveSeries(spec, payload, figureX) {
  if (spec.each) {
    return spec.each.flatMap((name) => {
      const one = Object.fromEntries(Object.entries(spec).filter(([k]) => k !== "each" && k !== "style")
        .map(([k, v]) => [k, typeof v === "string" ? v.replaceAll("{}", name) : v]));
      if (at(payload, one.y) == null) return [];
      const made = resolveSeries(one, payload, figureX);
      const look = spec.style === "classes" ? CLASSES[name] : null;
      return look ? made.map((s) => ({ ...s, color: look.color, marker: look.marker, dashed: Boolean(look.dashed) })) : made;
    });
  }
  const dashed = Boolean(spec.dashed);
  if (spec.points) {
    const points = (Array.isArray(at(payload, spec.points)) ? at(payload, spec.points) : []).filter((p) => p && typeof p === "object");
    return [{ label: spec.label, dashed, values: numbers(points.map((p) => p[spec.y])), x: points.map((p) => Number(p[spec.x])) }];
  }
  const values = numbers(at(payload, spec.y));
  const x = spec.x ? at(payload, spec.x) : figureX;
  return [{ label: spec.label, dashed, values, x: Array.isArray(x) ? x.slice(0, values.length).map(Number) : undefined }];
}

// The panels of figure `name` with the payload's values: [{title, xLabel, yLabel, xRange, series}].
export function figurePanels(name, payload) {
  const fig = FIGURES.figures[name];
  const figureX = fig.x ? at(payload, fig.x) : undefined;
  const count = fig.x_count ? Math.max(1, Number(at(payload, fig.x_count)) || 1) : undefined;
  return fig.panels.map((p) => ({
    title: p.title,
    xLabel: fig.x_label ?? "step",
    yLabel: p.y_label ?? "",
    xRange: count === undefined ? undefined : [0, count - 1],
    series: p.series.flatMap((s) => resolveSeries(s, payload, figureX)),
  }));
}

const xsOf = (s) => s.x ?? s.values.map((_, i) => i);

function drawMarker(ctx, kind, mx, my) {
  ctx.setLineDash([]);
  ctx.beginPath();
  if (kind === "circle") ctx.arc(mx, my, 5, 0, 2 * Math.PI);
  else if (kind === "diamond") { ctx.moveTo(mx, my - 6); ctx.lineTo(mx + 6, my); ctx.lineTo(mx, my + 6); ctx.lineTo(mx - 6, my); ctx.closePath(); }
  else if (kind === "square") ctx.rect(mx - 3, my - 3, 6, 6);
  else if (kind === "triangle") { ctx.moveTo(mx, my - 4); ctx.lineTo(mx - 4, my + 3); ctx.lineTo(mx + 4, my + 3); ctx.closePath(); }
  else return;
  if (HOLLOW.has(kind)) ctx.stroke(); else ctx.fill();
}

// panel = {title, xLabel, yLabel, xRange, series: [{label, values, x, dashed, color, marker}]};
// box = [x, y, w, h] in canvas pixels
export function drawPanel(ctx, panel, box) {
  const [x, y, w, h] = box;
  const legendH = 13 * panel.series.length + 4;
  const px0 = x + 56, py0 = y + 20, px1 = x + w - 8, py1 = y + h - 22 - legendH;
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#ddd";
  ctx.fillText(panel.title, x + 4, y + 13);
  const values = panel.series.flatMap((s) => s.values).filter(Number.isFinite);
  const xs = panel.series.flatMap(xsOf).filter(Number.isFinite);
  const [xlo, xhi] = panel.xRange ?? (xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1]);
  const lo = Math.min(0, ...values);
  const hi = values.length ? Math.max(...values) : 1;
  const yt = niceTicks(lo, hi);
  const ylo = yt[0], yhi = yt[yt.length - 1];
  const X = (v) => px0 + (xhi > xlo ? (v - xlo) / (xhi - xlo) : 0) * (px1 - px0);
  const Y = (v) => py1 - ((v - ylo) / (yhi - ylo || 1)) * (py1 - py0);
  ctx.strokeStyle = "#666";
  ctx.strokeRect(px0, py0, px1 - px0, py1 - py0);
  ctx.fillStyle = "#aaa";
  for (const t of yt) {
    ctx.fillText(fmt(t), px0 - 5 - ctx.measureText(fmt(t)).width, Y(t) + 4);
    ctx.beginPath(); ctx.moveTo(px0 - 3, Y(t)); ctx.lineTo(px0, Y(t)); ctx.stroke();
  }
  if (panel.yLabel) {
    ctx.save();
    ctx.translate(x + 10, (py0 + py1) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(String(panel.yLabel), -ctx.measureText(String(panel.yLabel)).width / 2, 0);
    ctx.restore();
  }
  ctx.fillText(fmt(xlo), X(xlo) - 3, py1 + 12);
  if (xhi > xlo) ctx.fillText(fmt(xhi), X(xhi) - 8, py1 + 12);
  ctx.fillText(panel.xLabel ?? "step", (px0 + px1) / 2 - 20, py1 + 12);
  const colorOf = (s, k) => s.color ?? PALETTE[k % PALETTE.length];
  panel.series.forEach((s, k) => {
    const color = colorOf(s, k);
    const sx = xsOf(s);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 1.6;
    ctx.setLineDash(s.dashed ? [5, 4] : []);
    ctx.beginPath();
    let drawn = 0;
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v) || !Number.isFinite(sx[i])) return;
      if (drawn++) ctx.lineTo(X(sx[i]), Y(v)); else ctx.moveTo(X(sx[i]), Y(v));
    });
    ctx.stroke();
    if (drawn === 1 && !s.marker) {
      const i = s.values.findIndex(Number.isFinite);
      ctx.fillRect(X(sx[i]) - 2, Y(s.values[i]) - 2, 4, 4);
    }
    const ly = py1 + 24 + 13 * k;
    ctx.beginPath(); ctx.moveTo(px0, ly - 4); ctx.lineTo(px0 + 22, ly - 4); ctx.stroke();
    drawMarker(ctx, s.marker, px0 + 11, ly - 4);
    ctx.setLineDash([]);
    ctx.fillStyle = "#ddd";
    ctx.fillText(String(s.label), px0 + 28, ly);
  });
  // markers over every line, the hollow ones last: a class whose line another covers stays visible
  const order = panel.series.map((s, k) => [s, k]).sort(([a], [b]) => HOLLOW.has(a.marker) - HOLLOW.has(b.marker));
  for (const [s, k] of order) {
    if (!s.marker) continue;
    const sx = xsOf(s);
    ctx.strokeStyle = colorOf(s, k);
    ctx.fillStyle = colorOf(s, k);
    s.values.forEach((v, i) => {
      if (Number.isFinite(v) && Number.isFinite(sx[i])) drawMarker(ctx, s.marker, X(sx[i]), Y(v));
    });
  }
  ctx.restore();
}

// Draw panels stacked vertically, filling the canvas.
export function drawPanels(canvas, panels) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const h = canvas.height / Math.max(1, panels.length);
  panels.forEach((p, i) => drawPanel(ctx, p, [0, i * h, canvas.width, h]));
}

// Draw figure `name` of figures.json from a node's payload; returns the panels drawn.
export function drawFigure(canvas, name, payload) {
  const panels = figurePanels(name, payload);
  drawPanels(canvas, panels);
  return panels;
}
