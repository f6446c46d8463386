// The fine-tune page: the server's public flows (or flows kept here) are fine-tuned on the owner's
// labelled images in the worker, measured before and after on held-out images (bits/dim, the
// Gaussianity probe, the share the key can encrypt), and kept in this browser's IndexedDB. Nothing
// on this page is sent anywhere: the only requests are the public flows' downloads.
import { flowFamilies, loadFamily, familyLabel, activeFamily, setActiveFamily } from './families.js';
import { COLOURS, lineChart } from '../lib/chart.js';
import { shapeText } from '../lib/draw.js';
import { $, say, progressTo } from '../lib/dom.js';
import { imageEntries, inputEntries, bindDrop, labelsFor, decodeEntries } from '../lib/files.js';
import { startKeyedPage } from '../lib/rpc.js';
import { storeFlows, listStoredFlows, deleteStoredFlows } from '../lib/store.js';

const state = { call: null, key: null, info: null, familyId: null, entries: [], sample: null, progress: null, result: null, curve: [] };
// For tests and the curious: what the page holds (no key material is in it).
window.veilFlows = state;

const fmt = (v, d = 3) => (v == null || Number.isNaN(v) ? '–' : Number(v).toFixed(d));

async function start() {
  if (!(await startKeyedPage(state))) return;
  await refreshFamilies();
  await showStored();
}

async function refreshFamilies(selectId) {
  try {
    const families = await flowFamilies();
    const sel = $('family');
    sel.replaceChildren(...families.map((f) => new Option(familyLabel(f), f.id)));
    const want = selectId || state.familyId || activeFamily();
    if (families.some((f) => f.id === want)) sel.value = want;
    sel.disabled = false;
    if (sel.value !== state.familyId) await useFamily(sel.value);
  } catch (err) { say($('message'), `The flows could not be listed: ${err.message}`, 'error'); }
}
$('family').addEventListener('change', (e) => useFamily(e.target.value));

async function useFamily(id) {
  state.info = null;
  state.result = null;
  updateButtons();
  $('flows-status').textContent = 'loading…';
  try {
    const info = await loadFamily(state.call, id, progressTo($('flows-progress')));
    state.info = info;
    state.familyId = id;
    $('flows-status').textContent = `loaded: ${info.data}`;
    $('class-names').textContent = info.classes.join(', ');
    $('shape').textContent = `${shapeText(info.shape)} with ${info.bins} grey levels`;
    $('files-label').replaceChildren(...info.classes.map((c, k) => new Option(c, String(k))));
    $('target').replaceChildren(
      new Option('every class\'s flow on its images, and the class-agnostic flow on all', 'all'),
      ...(info.agnostic ? [new Option('the class-agnostic flow only (route b)', 'agnostic')] : []),
      ...info.classes.map((c, k) => new Option(`class ${c}'s flow only`, `class:${k}`)),
    );
    const s = info.shape;
    $('sample-row').hidden = !(s.channels === 1 && s.height === 8 && s.width === 8 && info.classes.join('') === '0123456789');
    if (!$('save-name').dataset.touched) $('save-name').value = `${info.family} (mine)`;
    document.body.dataset.flows = info.family;
  } catch (err) {
    $('flows-status').textContent = '';
    say($('message'), `The flows could not be loaded: ${err.message}`, 'error');
  }
  updateButtons();
}
$('save-name').addEventListener('input', (e) => { e.target.dataset.touched = '1'; });

function updateButtons() {
  const running = document.body.dataset.state === 'running';
  $('run').disabled = running || !(state.info && state.entries.length);
  $('cancel').disabled = !running;
  $('save').disabled = running || !state.result?.finished;
}

// --- choosing images ------------------------------------------------------------------------
function setEntries(entries) {
  state.sample = null;
  state.entries = imageEntries(entries);
  const classes = new Map();
  for (const e of state.entries) {
    const c = e.className ?? '(label chosen above)';
    classes.set(c, (classes.get(c) || 0) + 1);
  }
  $('picked').textContent = state.entries.length
    ? `${state.entries.length} images: ${[...classes].map(([c, n]) => `${c} × ${n}`).join(', ')}.`
    : 'No images chosen.';
  updateButtons();
}
$('folder').addEventListener('change', (e) => setEntries(inputEntries(e.target)));
$('files').addEventListener('change', (e) => setEntries(inputEntries(e.target)));
bindDrop($('drop'), setEntries, (m) => say($('message'), m, 'error'));

async function useSample(inverted) {
  try {
    const sample = await state.call('sampleDigits', { n: 300 });
    if (inverted) sample.pixels = sample.pixels.map((v) => 1 - v);
    state.sample = sample;
    state.entries = Array.from(sample.labels, (l) => ({ file: null, className: state.info.classes[l] }));
    $('picked').textContent = `300 sample digits${inverted ? ', inverted' : ''} chosen.`;
    say($('message'), '', '');
  } catch (err) { say($('message'), err.message, 'error'); }
  updateButtons();
}
$('sample').addEventListener('click', () => useSample(false));
$('sample-inverted').addEventListener('click', () => useSample(true));

// --- fine-tuning ----------------------------------------------------------------------------
function options() {
  const t = $('target').value;
  const num = (id, what, lo, hi) => {
    const v = Number($(id).value);
    if (!Number.isFinite(v) || v < lo || v > hi) throw new Error(`${what} must be between ${lo} and ${hi}`);
    return v;
  };
  return {
    target: t.startsWith('class:') ? { class: Number(t.slice(6)) } : t,
    steps: Math.round(num('steps', 'the steps per flow', 1, 100000)),
    batch_size: Math.round(num('batch', 'the batch size', 1, 1024)),
    learning_rate: num('lr', 'the learning rate', 1e-6, 0.1),
    warmup_steps: 10,
    held_out: num('held-out', 'the held-out percentage', 0, 80) / 100,
    seed: Math.round(num('seed', 'the seed', 0, 2 ** 32)),
  };
}

$('run').addEventListener('click', async () => {
  const info = state.info;
  state.result = null;
  state.curve = [];
  document.body.dataset.state = 'running';
  updateButtons();
  say($('message'), '', '');
  $('results').tBodies[0].replaceChildren();
  const bar = $('progress');
  const label = $('progress-label');
  try {
    const opts = options();
    const labels = state.sample ? state.sample.labels : labelsFor(state.entries, info.classes, Number($('files-label').value));
    const pixels = state.sample
      ? state.sample.pixels.slice()
      : await decodeEntries(state.call, state.entries, info.shape, progressTo(bar, label));
    const plan = await state.call('fineTuneBegin', { pixels, labels: labels.slice(), options: opts }, { transfer: [pixels.buffer] });
    $('skipped').textContent = plan.skipped.length ? `Left as they were: ${plan.skipped.join('; ')}.` : '';
    const t0 = performance.now();
    const result = await state.call('fineTune', {}, {
      onProgress: ({ done, total, detail }) => {
        bar.max = total;
        bar.value = done;
        label.textContent = `flow ${detail.flow} (${detail.flow_index + 1} of ${detail.flows}): step ${detail.step} of ${detail.steps}, ${fmt(detail.bits_per_dim)} bits/dim`;
        state.progress = detail;
        if (detail.bits_per_dim != null) state.curve.push({ flow: detail.flow_index, step: done, bpd: detail.bits_per_dim });
        drawCurve();
        showReports(detail.reports);
      },
    });
    state.result = result;
    showReports(result.reports);
    const secs = (performance.now() - t0) / 1000;
    label.textContent = `done: ${result.total_steps} steps in ${secs.toFixed(1)} s (${(result.total_steps / secs).toFixed(1)} steps/s on ${$('backend').dataset.backend})`;
    document.body.dataset.state = 'finished';
    say($('message'), 'Fine-tuned. Compare before and after below, then keep the flows to encrypt with them.', 'ok');
  } catch (err) {
    document.body.dataset.state = 'failed';
    say($('message'), err.message, 'error');
  }
  updateButtons();
});

$('cancel').addEventListener('click', () => state.call('fineTuneCancel', {}).catch(() => {}));

function showReports(reports) {
  const rows = reports.map((r) => {
    const tr = document.createElement('tr');
    const g0 = r.before.gaussianity;
    const g1 = r.after.gaussianity;
    const pct = (v) => (v == null ? 'no key' : `${Math.round(v * 100)} %`);
    const cells = [
      r.name,
      `${r.train_images} / ${r.held_out_images}${r.held_out ? '' : ' (the training images)'}`,
      `${fmt(r.before.bits_per_dim)} → ${fmt(r.after.bits_per_dim)}`,
      `${fmt(g0.sliced_wasserstein)} → ${fmt(g1.sliced_wasserstein)} (${fmt(g1.sliced_wasserstein_gaussian_floor)})`,
      `${fmt(g0.mean_abs_mean, 2)} · ${fmt(g0.mean_abs_var_error, 2)} → ${fmt(g1.mean_abs_mean, 2)} · ${fmt(g1.mean_abs_var_error, 2)}`,
      `${pct(r.before.encryptable)} → ${pct(r.after.encryptable)}`,
    ];
    tr.replaceChildren(...cells.map((c) => { const td = document.createElement('td'); td.textContent = c; return td; }));
    tr.dataset.flow = r.name;
    return tr;
  });
  $('results').tBodies[0].replaceChildren(...rows);
}

function drawCurve() {
  const pts = state.curve;
  if (!pts.length) {
    lineChart($('curve'), { x: { min: 0, max: 1 }, y: { min: 0, max: 1 }, series: [] });
    return;
  }
  const total = state.progress?.total_steps || pts[pts.length - 1].step;
  const lo = Math.min(...pts.map((p) => p.bpd));
  const hi = Math.max(...pts.map((p) => p.bpd));
  const flows = [...new Set(pts.map((p) => p.flow))];
  lineChart($('curve'), {
    pad: { l: 44, r: 12, t: 10, b: 22 },
    x: { min: 0, max: total },
    y: { min: lo, max: Math.max(hi, lo + 1e-6), grid: [hi, lo], format: (v) => v.toFixed(2) },
    note: 'bits/dim over the steps of every flow',
    series: flows.map((f) => ({
      colour: COLOURS[f % 4],
      points: pts.filter((p) => p.flow === f).map((p) => ({ x: p.step, y: p.bpd })),
    })),
  });
}

// --- keeping the flows ----------------------------------------------------------------------
$('save').addEventListener('click', async () => {
  const name = $('save-name').value.trim();
  try {
    if (!name) throw new Error('Name the flows first.');
    const existing = await listStoredFlows();
    if (existing.some((f) => f.name === name) && !confirm(`Replace the flows called "${name}"?`)) return;
    const info = await state.call('fineTuneApply', { family: name });
    const { manifest, names, files } = await state.call('exportFlows', {});
    await storeFlows({
      name, base: state.familyId, data: info.data, shape: info.shape, classes: info.classes,
      agnostic: info.agnostic, manifest, names, files, reports: state.result.reports,
    });
    const id = `stored:${name}`;
    setActiveFamily(id);
    state.result = null;
    state.familyId = id;
    say($('save-message'), `Kept as "${name}" in this browser; the Encrypt page now uses them.`, 'ok');
    document.body.dataset.saved = name;
    await refreshFamilies(id);
    await showStored();
  } catch (err) { say($('save-message'), err.message, 'error'); }
  updateButtons();
});

async function showStored() {
  let stored = [];
  try { stored = await listStoredFlows(); } catch (err) { say($('save-message'), err.message, 'error'); }
  const list = $('stored');
  if (!stored.length) {
    const li = document.createElement('li');
    li.className = 'muted';
    li.textContent = 'None yet.';
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...stored.map((f) => {
    const li = document.createElement('li');
    const name = document.createElement('strong');
    name.textContent = f.name;
    const what = document.createElement('span');
    what.className = 'muted';
    const kb = f.files.reduce((n, b) => n + b.length, 0) / 1024;
    what.textContent = `${shapeText(f.shape)}, ${f.classes.length} classes; ${f.data}; ${kb.toFixed(0)} KiB; kept ${new Date(f.created).toLocaleString()}`;
    const forget = document.createElement('button');
    forget.type = 'button';
    forget.className = 'secondary';
    forget.textContent = 'Forget';
    forget.addEventListener('click', async () => {
      if (!confirm(`Forget the flows "${f.name}"? Data encrypted with them can then no longer be decrypted or classified.`)) return;
      await deleteStoredFlows(f.name);
      if (activeFamily() === `stored:${f.name}`) localStorage.removeItem('veil.activeFlows');
      await showStored();
      await refreshFamilies();
    });
    li.replaceChildren(name, what, forget);
    return li;
  }));
}

drawCurve();
start();
