// The gradient-leakage lab: picks a demo digit, starts an attack on the server, and draws the
// reconstruction and both PSNR curves from the attack's event stream. No wasm: the secret here is
// the server's own demo key, and the point is to watch what a server can do with a gradient.

import { failOnBrokenStream, startRun } from '../lib/api.js';
import { lineChart } from '../lib/chart.js';
import { $, sayMessage } from '../lib/dom.js';
import { drawImage } from '../lib/draw.js';

const state = { info: null, sample: 0, attack: null, source: null, history: [] };
// For tests and curious users: the points received so far.
window.veilLeakage = state;

const say = sayMessage;

function setState(s) {
  document.body.dataset.state = s;
  const running = s === 'running' || s === 'starting';
  $('start').disabled = running || !state.info;
  $('cancel').disabled = s !== 'running';
}

function drawChart() {
  const pts = state.history;
  const maxIt = Math.max(1, state.attack?.request?.iterations || 1, ...pts.map((p) => p.iteration));
  const top = Math.max(40, ...pts.map((p) => Math.min(p.psnr_vs_input, 100)));
  const grid = [];
  for (let db = 0; db <= top; db += top > 60 ? 20 : 10) grid.push(db);
  const series = (key, colour) => ({ colour, points: pts.map((p) => ({ x: p.iteration, y: p[key] })) });
  lineChart($('chart'), {
    pad: { l: 40, r: 10, t: 10, b: 28 },
    x: { min: 0, max: maxIt, ticks: [0], label: `${maxIt} iterations` },
    y: { min: 0, max: top, grid, format: (db) => `${db} dB` },
    series: [series('psnr_vs_plaintext', '#d0762f'), series('psnr_vs_input', '#2f5fd0')],
  });
}

function show(p, final) {
  const shape = state.info.shape;
  drawImage($('reconstruction'), p.image, shape);
  $('iteration').textContent = `${p.iteration} / ${p.iterations}`;
  $('loss').textContent = Number.isFinite(p.loss) ? p.loss.toExponential(3) : '—';
  const db = (v) => (v >= 100 ? 'exact (≥ 100 dB)' : `${v.toFixed(1)} dB`);
  $('psnr-input').textContent = db(p.psnr_vs_input);
  $('psnr-input').dataset.value = p.psnr_vs_input;
  $('psnr-plain').textContent = db(p.psnr_vs_plaintext);
  $('psnr-plain').dataset.value = p.psnr_vs_plaintext;
  $('progress').value = p.iteration / Math.max(1, p.iterations);
  $('progress-text').textContent = final ? 'done' : `iteration ${p.iteration}`;
  drawChart();
}

function selectSample(id) {
  state.sample = id;
  for (const b of document.querySelectorAll('#samples button')) {
    b.setAttribute('aria-checked', String(Number(b.dataset.id) === id));
  }
  showInputs();
}

function training() {
  return document.querySelector('input[name=training]:checked').value;
}

function showInputs() {
  const s = state.info.samples[state.sample];
  drawImage($('plaintext'), s.plaintext, state.info.shape);
  drawImage($('input'), training() === 'plain' ? s.plaintext : s.ciphertext, state.info.shape);
}

async function start() {
  if (state.source) state.source.close();
  state.history = [];
  const method = $('method').value;
  const arch = method === 'analytic' ? 'mlp' : $('arch').value;
  if (method === 'analytic') $('arch').value = 'mlp';
  const body = {
    sample: state.sample,
    training: training(),
    method,
    arch,
    iterations: Number($('iterations').value),
  };
  setState('starting');
  say('');
  let answer;
  try {
    answer = await startRun('/api/leakage/attacks', body);
  } catch (e) {
    say(e.message, 'error');
    setState('failed');
    return;
  }
  state.attack = answer;
  setState('running');
  $('label').textContent = '—';
  const source = new EventSource(answer.events_url);
  state.source = source;
  source.addEventListener('progress', (e) => {
    const p = JSON.parse(e.data);
    state.history.push(p);
    show(p, false);
  });
  source.addEventListener('done', (e) => {
    const r = JSON.parse(e.data);
    state.history.push(r);
    show(r, true);
    const truth = state.info.samples[state.sample].label;
    $('label').textContent = `${r.label} (${r.label_correct ? 'correct' : `true label ${truth}`})`;
    const cipher = training() === 'encrypted'
      ? ` The ciphertext itself scores ${r.input_psnr_vs_plaintext.toFixed(1)} dB against the digit: the attack learned nothing beyond it.`
      : '';
    say(`Done in ${r.seconds.toFixed(1)} s: ${r.psnr_vs_input.toFixed(1)} dB against what the client trained on, SSIM ${r.ssim_vs_input.toFixed(3)}.${cipher}`, 'ok');
    source.close();
    setState('done');
  });
  source.addEventListener('cancelled', (e) => {
    say(`Cancelled at iteration ${JSON.parse(e.data).iteration}.`);
    source.close();
    setState('cancelled');
  });
  source.addEventListener('failed', (e) => {
    say(`The attack failed: ${JSON.parse(e.data).error}`, 'error');
    source.close();
    setState('failed');
  });
  failOnBrokenStream(source, say, setState);
}

async function cancel() {
  if (!state.attack) return;
  const resp = await fetch(`/api/leakage/attacks/${state.attack.id}/cancel`, { method: 'POST' }).catch(() => null);
  if (!resp || !resp.ok) say('The attack could not be cancelled.', 'error');
}

async function init() {
  setState('loading');
  let info;
  try {
    const resp = await fetch('/api/leakage');
    if (!resp.ok) throw new Error(`the server answered ${resp.status}`);
    info = await resp.json();
  } catch (e) {
    say(`The lab cannot load: ${e.message}`, 'error');
    setState('failed');
    return;
  }
  state.info = info;
  $('demo-key').textContent = info.demo_key_fingerprint;
  $('iterations').max = info.max_iterations;
  const box = $('samples');
  for (const s of info.samples) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.id = s.id;
    b.setAttribute('role', 'radio');
    b.setAttribute('aria-label', `digit ${s.label}, sample ${s.id}`);
    const c = document.createElement('canvas');
    c.width = 40;
    c.height = 40;
    b.append(c);
    box.append(b);
    drawImage(c, s.plaintext, info.shape);
    b.addEventListener('click', () => selectSample(s.id));
  }
  for (const r of document.querySelectorAll('input[name=training]')) r.addEventListener('change', showInputs);
  $('start').addEventListener('click', start);
  $('cancel').addEventListener('click', cancel);
  selectSample(0);
  drawChart();
  setState('idle');
}

init();
