// The one chart module: every page's curves (training, fine-tuning, attacks) and bars go through
// it, so they share axes, grid lines, fonts and colours.

const INK = '#5b6478';
const GRID = '#e3e6ee';
const AXIS = '#889';
const FONT = '11px system-ui, sans-serif';

// Series colours, in order.
export const COLOURS = ['#2f5fd0', '#1b7a3d', '#d0762f', '#8a3fd0', '#99a'];

// Clears `canvas` and returns its plotting area: {ctx, pad, W, H}. With `axes`, draws the left
// and bottom axes.
export function frame(canvas, { pad = { l: 44, r: 12, t: 10, b: 26 }, axes = false } = {}) {
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const W = canvas.width - pad.l - pad.r;
  const H = canvas.height - pad.t - pad.b;
  if (axes) {
    ctx.strokeStyle = AXIS;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(pad.l, pad.t);
    ctx.lineTo(pad.l, pad.t + H);
    ctx.lineTo(pad.l + W, pad.t + H);
    ctx.stroke();
  }
  ctx.fillStyle = INK;
  ctx.font = FONT;
  return { ctx, pad, W, H };
}

// Line series on shared axes.
// - x: {min, max, log (a logarithmic axis), ticks: [values labelled under the axis], label}
// - y: {min, max, grid: [values with a line and a label], format(v): the label}
// - series: [{points: [{x, y}], colour}], one line each (points whose y is not finite are left out)
// - note: text under the axis; pad and axes as for frame().
export function lineChart(canvas, { x, y, series, note, pad, axes }) {
  const { ctx, pad: p, W, H } = frame(canvas, { pad, axes });
  const span = (lo, hi) => Math.max(1e-12, hi - lo);
  const sx = x.log
    ? (v) => p.l + (Math.log(v / x.min) / Math.log(Math.max(1 + 1e-12, x.max / x.min))) * W
    : (v) => p.l + ((v - x.min) / span(x.min, x.max)) * W;
  const sy = (v) => p.t + H - ((Math.min(Math.max(v, y.min), y.max) - y.min) / span(y.min, y.max)) * H;
  const format = y.format || String;
  ctx.lineWidth = 1;
  ctx.strokeStyle = GRID;
  for (const v of y.grid || []) {
    ctx.beginPath();
    ctx.moveTo(p.l, sy(v));
    ctx.lineTo(p.l + W, sy(v));
    ctx.stroke();
    ctx.fillText(format(v), 2, sy(v) + 4);
  }
  const below = canvas.height - 6;
  for (const v of x.ticks || []) ctx.fillText(String(v), Math.min(sx(v) - 8, canvas.width - 28), below);
  if (x.label) ctx.fillText(x.label, p.l + W - ctx.measureText(x.label).width, below);
  if (note) ctx.fillText(note, p.l, below);
  ctx.lineWidth = 2;
  series.forEach((s, i) => {
    const pts = s.points.filter((q) => Number.isFinite(q.y));
    if (!pts.length) return;
    ctx.strokeStyle = s.colour || COLOURS[i % COLOURS.length];
    ctx.beginPath();
    pts.forEach((q, j) => (j ? ctx.lineTo(sx(q.x), sy(q.y)) : ctx.moveTo(sx(q.x), sy(q.y))));
    ctx.stroke();
  });
}

// One bar per value, from zero, with the zero line.
export function barChart(canvas, values, colour = COLOURS[0]) {
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!values.length) return;
  const lo = Math.min(0, ...values);
  const hi = Math.max(1e-9, ...values);
  const H = canvas.height - 10;
  const y = (v) => 5 + H - ((v - lo) / (hi - lo)) * H;
  const w = canvas.width / values.length;
  ctx.fillStyle = colour;
  values.forEach((v, i) => {
    const top = Math.min(y(v), y(0));
    ctx.fillRect(i * w, top, Math.max(1, w), Math.max(1, Math.abs(y(v) - y(0))));
  });
  ctx.strokeStyle = AXIS;
  ctx.beginPath();
  ctx.moveTo(0, y(0));
  ctx.lineTo(canvas.width, y(0));
  ctx.stroke();
}

// Histograms over the same bins, drawn in order (the last in front): [{shares, colour}], each
// share in [0, 1].
export function histograms(canvas, list, { pad } = {}) {
  const { ctx, pad: p, W, H } = frame(canvas, { pad, axes: true });
  const bins = Math.max(1, ...list.map((h) => h.shares.length));
  const top = Math.max(0.01, ...list.flatMap((h) => h.shares));
  for (const { shares, colour } of list) {
    ctx.fillStyle = colour;
    shares.forEach((v, i) => {
      const bh = (v / top) * H;
      ctx.fillRect(p.l + (i / bins) * W, p.t + H - bh, W / bins - 1, bh);
    });
  }
  ctx.fillStyle = INK;
  return { ctx, pad: p, W, H };
}
