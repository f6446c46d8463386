// The RTAS lab: picks test digits, asks the server to run the four RTAS parties on loopback,
// and draws what crossed every link from the run's event stream. No wasm and no key here: the
// parties are the server's own demo, on public digits (see the note on the page).

import { failOnBrokenStream, startRun } from '../lib/api.js';
import { barChart } from '../lib/chart.js';
import { $, definitions, sayMessage } from '../lib/dom.js';
import { imageCanvas } from '../lib/draw.js';

const ROLES = ['p0', 'p1', 'dealer', 'helper'];
const TITLES = {
  p0: 'P0 — the data owner',
  p1: 'P1 — the second share holder',
  dealer: 'Dealer — makes Beaver triples',
  helper: 'Helper — evaluates non-linear functions',
};
const ROLE_NOTES = {
  p0: 'Holds the digits, one share of everything, and opens the answer.',
  p1: 'Holds the other share of everything; never a pixel.',
  dealer: 'Sees only the shapes of the products P0 asks for.',
  helper: 'Adds the two shares of each permuted vector, applies the function, shares it again.',
};
// The links that carry messages (the dealer and the helper never talk).
const LINKS = [['p0', 'p1'], ['p0', 'dealer'], ['p1', 'dealer'], ['p0', 'helper'], ['p1', 'helper']];
const POS = { p0: [95, 150], p1: [465, 150], dealer: [280, 40], helper: [280, 262] };

const state = { info: null, picked: [], run: null, source: null, events: [] };
// For tests and curious users: every event received so far.
window.veilRtas = state;

const say = sayMessage;

function setState(s) {
  document.body.dataset.state = s;
  $('start').disabled = s === 'running' || s === 'starting' || !state.info || state.picked.length === 0;
}

function bytes(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

function canvasOf(values, w, h, size, label) {
  const c = imageCanvas(values, { channels: 1, height: h, width: w }, size);
  c.setAttribute('aria-label', label);
  return c;
}

function figure(canvas, caption) {
  const f = document.createElement('figure');
  f.append(canvas);
  const fc = document.createElement('figcaption');
  fc.textContent = caption;
  f.append(fc);
  return f;
}

function renderSamples() {
  const box = $('samples');
  box.replaceChildren();
  const { shape, samples } = state.info;
  for (const s of samples) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.id = s.id;
    b.setAttribute('aria-label', `digit ${s.label}`);
    b.setAttribute('aria-checked', String(state.picked.includes(s.id)));
    b.append(canvasOf(s.image, shape.width, shape.height, 48, `digit ${s.label}`));
    b.addEventListener('click', () => toggle(s.id));
    box.append(b);
  }
}

function toggle(id) {
  const i = state.picked.indexOf(id);
  if (i >= 0) state.picked.splice(i, 1);
  else if (state.picked.length < state.info.max_images) state.picked.push(id);
  else say(`Pick at most ${state.info.max_images} digits.`, 'warn');
  for (const b of document.querySelectorAll('#samples button')) {
    b.setAttribute('aria-checked', String(state.picked.includes(Number(b.dataset.id))));
  }
  setState(document.body.dataset.state);
}

function drawLinks(matrix) {
  const svg = $('links');
  const ns = 'http://www.w3.org/2000/svg';
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  svg.replaceChildren();
  const idx = (r) => ROLES.indexOf(r);
  for (const [a, b] of LINKS) {
    const [x1, y1] = POS[a];
    const [x2, y2] = POS[b];
    el('line', { x1, y1, x2, y2, stroke: '#b9c0cf', 'stroke-width': 2 });
    const ab = matrix ? matrix[idx(a)][idx(b)] : 0;
    const ba = matrix ? matrix[idx(b)][idx(a)] : 0;
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2;
    const t = el('text', { x: mx, y: my - 4, 'text-anchor': 'middle', 'font-size': 11, fill: '#2f3a52' });
    t.textContent = `${a}→${b} ${bytes(ab)}`;
    el('text', { x: mx, y: my + 10, 'text-anchor': 'middle', 'font-size': 11, fill: '#5b6478' },
      `${b}→${a} ${bytes(ba)}`).dataset.link = `${b}-${a}`;
    t.dataset.link = `${a}-${b}`;
  }
  for (const r of ROLES) {
    const [x, y] = POS[r];
    el('rect', { x: x - 50, y: y - 17, width: 100, height: 34, rx: 8, fill: r === 'p0' ? '#e1f3e8' : '#eef1f7', stroke: '#8a93a8' });
    el('text', { x, y: y + 5, 'text-anchor': 'middle', 'font-size': 14, 'font-weight': 600 }, r === 'p0' ? 'P0 (owner)' : r);
  }
}

function drawTraffic(t) {
  drawLinks(t.bytes);
  const body = $('traffic');
  body.replaceChildren();
  ROLES.forEach((from, i) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.textContent = from;
    tr.append(th);
    ROLES.forEach((to, j) => {
      const td = document.createElement('td');
      td.textContent = i === j ? '—' : bytes(t.bytes[i][j]);
      td.dataset.from = from;
      td.dataset.to = to;
      td.dataset.bytes = t.bytes[i][j];
      tr.append(td);
    });
    body.append(tr);
  });
  const total = t.bytes.flat().reduce((a, b) => a + b, 0);
  $('traffic-note').textContent = `${bytes(total)} in ${t.seconds.toFixed(1)} s (${t.phase}).`;
  if (t.to_train > 0) {
    $('progress').value = t.trained / t.to_train;
    $('progress-text').textContent = t.phase === 'training'
      ? `training on shares: ${t.trained} / ${t.to_train} images`
      : t.phase;
  }
}

function partyCards() {
  const box = $('views');
  box.replaceChildren();
  for (const r of ROLES) {
    const card = document.createElement('article');
    card.className = 'party';
    card.id = `view-${r}`;
    const h = document.createElement('h3');
    h.textContent = TITLES[r];
    const p = document.createElement('p');
    p.className = 'note';
    p.textContent = ROLE_NOTES[r];
    const list = document.createElement('div');
    list.className = 'received';
    card.append(h, p, list);
    box.append(card);
  }
  const { shape } = state.info;
  const own = document.createElement('div');
  own.className = 'pairs';
  for (const id of state.picked) {
    const s = state.info.samples[id];
    own.append(figure(canvasOf(s.image, shape.width, shape.height, 40, `P0's digit ${s.label}`), 'own digit'));
  }
  document.querySelector('#view-p0 .received').append(own);
}

function showCapture(c) {
  const list = document.querySelector(`#view-${c.to} .received`);
  if (!list) return;
  const item = document.createElement('div');
  item.className = 'capture';
  item.dataset.message = c.message;
  item.dataset.from = c.from;
  const title = document.createElement('p');
  title.innerHTML = `<strong>${c.message}</strong> from ${c.from} · ${bytes(c.bytes)}`;
  item.append(title);
  const figs = document.createElement('div');
  figs.className = 'pairs';
  const { shape } = state.info;
  for (const part of c.parts) {
    // A share of P0's images is drawn as an image; other matrices as 16 × 16 squares.
    const asImage = part.name === 'share' && part.cols === shape.width * shape.height;
    const [w, h] = asImage ? [shape.width, shape.height] : [16, Math.max(1, Math.ceil(Math.min(256, part.uniform.length) / 16))];
    const head = part.decoded.slice(0, 2).map((v) => v.toExponential(1)).join(', ');
    figs.append(figure(canvasOf(part.uniform, w, h, 64, `${part.name} of ${c.message}`),
      `${part.name} ${part.rows}×${part.cols} (${head}…)`));
  }
  item.append(figs);
  list.append(item);
}

function showOpened(o) {
  for (const r of ['p0', 'p1']) {
    const list = document.querySelector(`#view-${r} .received`);
    const item = document.createElement('div');
    item.className = 'capture';
    item.dataset.message = 'opened';
    const t = document.createElement('p');
    t.innerHTML = '<strong>Opened</strong> x − u and y − v (both holders learn them)';
    const figs = document.createElement('div');
    figs.className = 'pairs';
    figs.append(figure(canvasOf(o.e, 16, Math.ceil(o.e.length / 16), 64, 'x − u'), 'x − u'));
    figs.append(figure(canvasOf(o.f, 16, Math.ceil(o.f.length / 16), 64, 'y − v'), 'y − v'));
    item.append(t, figs);
    list.append(item);
  }
}

function showHelper(h) {
  barChart($('helper-order'), h.values);
  barChart($('helper-sorted'), [...h.values].sort((a, b) => a - b));
  const n = h.rows * h.cols;
  $('helper-caption').textContent = h.permuted
    ? `The helper added P0's and P1's shares of a ${h.rows}×${h.cols} vector and saw these ${n} values (the inputs of ${h.function}), in an order only P0 and P1 know. There are n! = 10^${h.log10_factorial.toFixed(0)} orders.`
    : `RTAS-fast: the helper received the first layer's ${h.rows}×${h.cols} outputs in order — one row per digit — and ran the rest of the network in the clear.`;
  const list = document.querySelector('#view-helper .received');
  const p = document.createElement('p');
  p.innerHTML = `<strong>Reconstructed</strong> ${n} values: see section 4.`;
  list.append(p);
}

function showClaims() {
  const m = state.info.measured;
  const pct = (v) => `${(100 * v).toFixed(1)} %`;
  const rows = [
    ['Paper\'s claim for one image (n = ' + m.values_per_image + ')', `1/n! = 10^−${m.claimed_log10_factorial.toFixed(0)} chance to recover the order`],
    ['Class from the sorted view of one image (RTAS)', `${pct(m.rtas_class_accuracy)} (chance ${pct(m.chance)})`],
    ['Nearest known image to that view', `${m.rtas_nearest_psnr.toFixed(1)} dB (the mean image: ${m.mean_image_psnr.toFixed(1)} dB): no pixels`],
    ['Class from RTAS-fast\'s first-layer outputs', pct(m.fast_class_accuracy)],
    ['RTAS-fast inversion from known pairs', `${m.fast_inversion_psnr.toFixed(1)} dB: the image comes back`],
  ];
  const dl = $('claims');
  definitions(dl, rows);
  const note = document.createElement('dd');
  note.className = 'note';
  note.textContent = 'Measured by `veil experiment rtas` on the UCI digits (docs/results/rtas.json).';
  dl.append(document.createElement('dt'), note);
}

function showResult(r) {
  const box = $('result');
  box.replaceChildren();
  const { shape } = state.info;
  const logistic = $('model').value === 'logistic';
  const name = (c) => (logistic ? (c === 1 ? '“a 0”' : '“not a 0”') : String(c));
  state.picked.forEach((id, i) => {
    const s = state.info.samples[id];
    const ok = r.predictions[i] === r.truth[i];
    box.append(figure(canvasOf(s.image, shape.width, shape.height, 48, `digit ${s.label}`),
      `${name(r.predictions[i])} ${ok ? '✓' : '✗'} (clear: ${name(r.plaintext_predictions[i])})`));
  });
  const agree = r.predictions.filter((p, i) => p === r.plaintext_predictions[i]).length;
  const inf = r.inference_bytes.flat().reduce((a, b) => a + b, 0);
  const rows = [
    ['Agrees with the same network trained in the clear', `${agree} of ${r.predictions.length}`],
    ['Bytes for the inference alone', `${bytes(inf)} (${bytes(inf / r.predictions.length)} per digit)`],
    ['Beaver triples dealt (training and inference)', String(r.triples)],
    ['Vectors the helper evaluated', String(r.helper_calls)],
    ['Values too large to be real (truncation failures)', String(r.implausible)],
    ['Wall time of the protocol', `${r.seconds.toFixed(1)} s`],
  ];
  definitions($('result-figures'), rows);
}

async function start() {
  if (state.source) state.source.close();
  state.events = [];
  const body = {
    samples: state.picked,
    model: $('model').value,
    mode: $('mode').value,
    epochs: Number($('epochs').value),
  };
  setState('starting');
  say('');
  partyCards();
  $('result').replaceChildren();
  $('result-figures').replaceChildren();
  let answer;
  try {
    answer = await startRun('/api/rtas/runs', body);
  } catch (e) {
    say(e.message, 'error');
    setState('failed');
    return;
  }
  state.run = answer;
  setState('running');
  const source = new EventSource(answer.events_url);
  state.source = source;
  const on = (name, f) => source.addEventListener(name, (e) => {
    const data = JSON.parse(e.data);
    state.events.push({ name, data });
    f(data);
  });
  on('started', (s) => say(`Parties listening on ${Object.entries(s.addresses).map(([r, a]) => `${r} ${a}`).join(', ')}; training on shares…`));
  on('traffic', drawTraffic);
  on('captured', showCapture);
  on('opened', showOpened);
  on('helper', showHelper);
  on('done', (r) => {
    showResult(r);
    say(`Done in ${r.seconds.toFixed(1)} s.`, 'ok');
    source.close();
    setState('done');
  });
  on('failed', (f) => {
    say(`The run failed: ${f.error}`, 'error');
    source.close();
    setState('failed');
  });
  failOnBrokenStream(source, say, setState);
}

async function init() {
  setState('loading');
  try {
    const resp = await fetch('/api/rtas');
    if (!resp.ok) throw new Error(`the server answered ${resp.status}`);
    state.info = await resp.json();
  } catch (e) {
    say(`The lab cannot load: ${e.message}`, 'error');
    setState('failed');
    return;
  }
  // One digit each of 0, 3, 7 and 9 to start with.
  state.picked = [0, 3, 7, 9].map((c) => state.info.samples.find((s) => s.label === c)?.id).filter((i) => i !== undefined);
  $('epochs').max = state.info.max_epochs;
  renderSamples();
  showClaims();
  drawLinks(null);
  partyCards();
  $('start').addEventListener('click', start);
  setState('ready');
}

init();
