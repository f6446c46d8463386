// The black-box lab: starts a membership-inference, model-extraction or model-inversion attack on the server
// against one of the factory's models and draws what its event stream reports. No wasm and no
// key: the attack runs where the model is, on what the model answers.

import { apiJson, ownerEvents, startRun } from '../lib/api.js';
import { histograms, lineChart } from '../lib/chart.js';
import { $, definitions, sayMessage } from '../lib/dom.js';
import { drawImage } from '../lib/draw.js';

const state = { run: null, stop: null, membership: null, points: [], inverted: [], done: null };
// For tests and curious users: what the stream has delivered.
window.veilBlackBox = state;

const say = sayMessage;

function setState(s) {
  document.body.dataset.state = s;
  const running = s === 'running' || s === 'starting';
  $('start').disabled = running || !$('model').value;
  $('cancel').disabled = s !== 'running';
}

const pct = (x) => `${(100 * x).toFixed(1)} %`;

function figures(rows) {
  definitions($('figures'), rows.map(([id, name, value]) => [name, value, id]));
}

const CHART_PAD = { l: 40, r: 10, t: 10, b: 30 };

// Two histograms of log10(loss): members (blue) in front of non-members (orange).
function drawMembership(m) {
  const c = $('chart');
  const share = (h, n) => h.map((v) => v / Math.max(1, n));
  const { ctx, pad, W } = histograms(c, [
    { shares: share(m.non_member_histogram, m.non_members), colour: 'rgba(230,140,40,.6)' },
    { shares: share(m.member_histogram, m.members), colour: 'rgba(50,90,200,.6)' },
  ], { pad: CHART_PAD });
  const [lo, hi] = m.log10_loss_range;
  ctx.fillText(`loss 1e${lo}`, pad.l, c.height - 10);
  ctx.fillText(`1e${hi.toFixed(1)}`, pad.l + W - 40, c.height - 10);
  ctx.fillText('members (blue), non-members (orange): share per bin of log10(loss)', pad.l + 70, c.height - 10);
}

// Agreement (blue) and the copy's accuracy (grey) against the number of queries.
function drawExtraction(points) {
  const series = (key, colour) => ({ colour, points: points.map((p) => ({ x: p.queries, y: p[key] })) });
  lineChart($('chart'), {
    pad: CHART_PAD,
    axes: true,
    x: { min: 25, max: 800, log: true, ticks: points.map((p) => p.queries) },
    y: { min: 0, max: 1, grid: [0, 1], format: (v) => (v ? '100 %' : '0') },
    series: [series('copy_accuracy', '#99a'), series('agreement', '#325ac8')],
  });
}

// Each class: the mean of its training images above the inversion, with the scores.
function drawInversions(list) {
  $('inversions').replaceChildren(...list.map((v) => {
    const fig = document.createElement('figure');
    const scale = Math.max(2, Math.floor(56 / v.shape.width));
    for (const pixels of [v.class_mean, v.image]) {
      const c = document.createElement('canvas');
      c.width = v.shape.width * scale;
      c.height = v.shape.height * scale;
      drawImage(c, pixels, v.shape);
      fig.append(c);
    }
    const cap = document.createElement('figcaption');
    const found = v.nearest_class === v.class ? 'its own class' : `class ${v.nearest_class}`;
    cap.textContent = `${v.name}: p ${v.confidence.toFixed(2)}, ${v.psnr.toFixed(1)} dB (domain mean ${v.domain_mean_psnr.toFixed(1)}), shows ${found}`;
    fig.append(cap);
    return fig;
  }));
}

function show() {
  const m = state.membership;
  if (state.inverted.length) {
    const list = state.inverted;
    const n = list.length;
    const identified = list.filter((v) => v.nearest_class === v.class).length;
    const nearer = list.filter((v) => v.psnr > v.domain_mean_psnr).length;
    const mean = (k) => list.reduce((a, v) => a + v[k], 0) / n;
    figures([
      ['classes', 'Classes inverted', String(n)],
      ['identified', "Inversions that show their own class's features", `${identified} of ${n}`],
      ['psnr', 'Mean PSNR against the class mean (the domain mean alone)', `${mean('psnr').toFixed(1)} dB (${mean('domain_mean_psnr').toFixed(1)} dB)`],
      ['ssim', 'Mean SSIM against the class mean', mean('ssim').toFixed(3)],
      ['queries', 'Queries', String(list.reduce((a, v) => a + v.queries, 0))],
    ]);
    $('chart').hidden = true;
    drawInversions(list);
    $('reading').textContent = `${identified} of ${n} inversions show their own class's features, and ${nearer} of ${n} are nearer their class's mean than the domain's mean is: the model's answers tell what its classes look like. For a model trained on ciphertexts these are ciphertexts' looks, compared here with the ciphertexts' means; the owner's originals are not on the server.`;
  } else if (m) {
    figures([
      ['auc', 'ROC AUC', m.auc.toFixed(3)],
      ['tpr', 'True positives at 1 % false positives', pct(m.tpr_at_1pct_fpr)],
      ['advantage', 'Membership advantage (TPR − FPR, best threshold)', m.advantage.toFixed(3)],
      ['accuracies', 'Model accuracy on members / non-members', `${pct(m.train_accuracy)} / ${pct(m.test_accuracy)}`],
      ['scored', 'Images scored', `${m.members} members, ${m.non_members} non-members`],
    ]);
    drawMembership(m);
    $('reading').textContent = m.auc < 0.55
      ? 'Barely better than a coin: this model generalises, and its losses say little about who was trained on.'
      : `Better than a coin: the model fits its members more closely (a gap of ${pct(m.train_accuracy - m.test_accuracy)} in accuracy), and the loss gives some of them away.`;
  } else if (state.points.length) {
    const last = state.points[state.points.length - 1];
    figures(state.points.map((p) => [`q${p.queries}`, `${p.queries} queries`, `agreement ${pct(p.agreement)}, copy accuracy ${pct(p.copy_accuracy)}`]));
    drawExtraction(state.points);
    $('reading').textContent = `With ${last.queries} answers the copy answers as the model does on ${pct(last.agreement)} of unseen images. For a model on ciphertexts the copy is a model on ciphertexts: it is as useful as the key that made them.`;
  }
}

async function start() {
  state.stop?.();
  Object.assign(state, { run: null, membership: null, points: [], inverted: [], done: null });
  figures([]);
  $('chart').hidden = false;
  $('inversions').replaceChildren();
  $('reading').textContent = '';
  setState('starting');
  say('');
  let answer;
  try {
    answer = await startRun('/api/blackbox/attacks', { model: $('model').value, attack: $('attack').value });
  } catch (e) {
    say(e.message, 'error');
    setState('failed');
    return;
  }
  state.run = answer;
  document.body.dataset.run = answer.id;
  setState('running');
  say('Attacking…');
  const bar = $('progress');
  state.stop = ownerEvents(answer.events_url, (name, data) => {
    if (name === 'progress') {
      bar.hidden = false;
      bar.max = data.of;
      bar.value = data.step;
      say(`${data.what}…`);
    } else if (name === 'point') {
      state.points.push(data);
      bar.value = state.points.length;
      show();
    } else if (name === 'inverted') {
      state.inverted.push(data);
      show();
    } else if (name === 'membership') {
      state.membership = data;
      show();
    } else if (name === 'done') {
      state.done = data;
      bar.hidden = true;
      say(`Done in ${data.seconds.toFixed(1)} s. The model's accuracy on the held-out images: ${pct(data.test_accuracy)}.`, 'ok');
      setState('done');
    } else if (name === 'cancelled') {
      say('Cancelled.');
      setState('cancelled');
    } else if (name === 'failed') {
      say(`The attack failed: ${data.error}`, 'error');
      setState('failed');
    }
  }, (error) => {
    if (error) {
      say(`The event stream broke: ${error.message}`, 'error');
      setState('failed');
    }
  });
}

async function cancel() {
  if (!state.run) return;
  await fetch(`/api/blackbox/attacks/${state.run.id}/cancel`, { method: 'POST' }).catch(() => null);
}

async function init() {
  setState('loading');
  try {
    const models = await apiJson('/api/models');
    const attackable = models.filter((m) => m.name === 'digits-cnn' || m.kind === 'trained');
    $('model').replaceChildren(...attackable.map((m) => {
      const o = document.createElement('option');
      o.value = m.name;
      o.textContent = m.kind === 'trained'
        ? `${m.name} (trained on ${m.dataset}, ${m.scheme})`
        : `${m.name} (built-in, plain digits)`;
      return o;
    }));
  } catch (e) {
    say(`The models cannot be listed: ${e.message}`, 'error');
  }
  setState('ready');
}

$('start').addEventListener('click', start);
$('cancel').addEventListener('click', cancel);
$('model').addEventListener('change', () => setState(document.body.dataset.state));
init();
