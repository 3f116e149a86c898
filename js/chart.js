// ShapeFirst: small canvas line charts drawn inside nodes. No HTML is built from data:
// labels are drawn with fillText on the canvas, so prompt or file text can never become markup.

export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

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

// panel = {title, series: [{label, values, dashed}]}; box = [x, y, w, h] in canvas pixels
export function drawPanel(ctx, panel, box) {
  const [x, y, w, h] = box;
  const legendH = 13 * panel.series.length + 4;
  const px0 = x + 44, py0 = y + 20, px1 = x + w - 8, py1 = y + h - 22 - legendH;
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#ddd";
  ctx.fillText(panel.title, x + 4, y + 13);
  const values = panel.series.flatMap((s) => s.values).filter(Number.isFinite);
  const n = Math.max(1, ...panel.series.map((s) => s.values.length));
  const lo = Math.min(0, ...(values.length ? values : [0]));
  const hi = values.length ? Math.max(...values) : 1;
  const yt = niceTicks(lo, hi);
  const ylo = yt[0], yhi = yt[yt.length - 1];
  const X = (i) => px0 + (i / Math.max(1, n - 1)) * (px1 - px0);
  const Y = (v) => py1 - ((v - ylo) / (yhi - ylo || 1)) * (py1 - py0);
  ctx.strokeStyle = "#666";
  ctx.strokeRect(px0, py0, px1 - px0, py1 - py0);
  ctx.fillStyle = "#aaa";
  for (const t of yt) {
    ctx.fillText(fmt(t), x + 2, Y(t) + 4);
    ctx.beginPath(); ctx.moveTo(px0 - 3, Y(t)); ctx.lineTo(px0, Y(t)); ctx.stroke();
  }
  ctx.fillText("0", X(0) - 3, py1 + 12);
  ctx.fillText(String(n - 1), X(n - 1) - 8, py1 + 12);
  ctx.fillText("step", (px0 + px1) / 2 - 10, py1 + 12);
  panel.series.forEach((s, k) => {
    const color = PALETTE[k % PALETTE.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.6;
    ctx.setLineDash(s.dashed ? [5, 4] : []);
    ctx.beginPath();
    let started = false;
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      if (started) ctx.lineTo(X(i), Y(v)); else { ctx.moveTo(X(i), Y(v)); started = true; }
    });
    ctx.stroke();
    const ly = py1 + 24 + 13 * k;
    ctx.beginPath(); ctx.moveTo(px0, ly - 4); ctx.lineTo(px0 + 18, ly - 4); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#ddd";
    ctx.fillText(String(s.label), px0 + 24, ly);
  });
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
