// The classify page: new images are encrypted here along one of the three routes, only the
// ciphertexts go to the factory's model, and the answer is read here.
import { flowFamilies, loadFamily, familyLabel, activeFamily } from './families.js';
import { apiJson } from '../lib/api.js';
import { $, say, progressTo } from '../lib/dom.js';
import { drawImage, imageLen } from '../lib/draw.js';
import { imageEntries, inputEntries, bindDrop } from '../lib/files.js';
import { startKeyedPage } from '../lib/rpc.js';

const state = { call: null, key: null, models: [], model: null, info: null, entries: [], results: null, accuracy: null };
window.veilClassify = state;
const MAX_BATCH = 1024; // the factory's limit per request

function sameShape(a, b) { return a.channels === b.channels && a.height === b.height && a.width === b.width; }

async function start() {
  const client = await startKeyedPage(state, 'no key loaded — generate or import one on the Keys page');
  if (!client) return;
  try {
    const models = (await apiJson('/api/models')).filter((m) => m.scheme === 'flow-rotation');
    state.models = models;
    const wanted = new URLSearchParams(location.search).get('model');
    const sel = $('model');
    sel.replaceChildren(...models.map((m) => {
      const mine = client.key && m.key_fingerprint === client.key.fingerprint;
      const acc = m.accuracy != null ? `, validation ${(100 * m.accuracy).toFixed(1)} %` : '';
      const o = new Option(`${m.name} — ${m.arch} on ${m.dataset}${acc}${mine ? '' : ' (another key)'}`, m.name);
      o.disabled = !mine;
      return o;
    }));
    const usable = models.filter((m) => client.key && m.key_fingerprint === client.key.fingerprint);
    if (!usable.length) {
      say($('message'), models.length
        ? 'No model here was trained on ciphertexts of your key: train one first.'
        : 'The factory has no model trained on flow-rotation ciphertexts yet: encrypt a dataset and train one first.', 'error');
      return;
    }
    sel.value = usable.some((m) => m.name === wanted) ? wanted : usable[0].name;
    sel.addEventListener('change', chooseModel);
    await chooseModel();
  } catch (err) { say($('message'), `The factory's models could not be listed: ${err.message}`, 'error'); }
}

async function chooseModel() {
  const m = state.models.find((x) => x.name === $('model').value);
  state.model = m;
  state.info = null;
  updateButtons();
  try {
    const families = (await flowFamilies())
      .filter((f) => sameShape(f.shape, m.input) && f.classes.join('\n') === m.classes.join('\n'));
    if (!families.length) throw new Error(`no flows here fit ${m.input.channels}×${m.input.height}×${m.input.width} images with these classes`);
    // The model reads ciphertexts of the flows its dataset was encrypted with: the container's
    // description names them ("flow rotation of the <family> family, …"), and a model trained
    // on class-agnostic ciphertexts needs route (b).
    const record = await apiJson(`/api/models/${encodeURIComponent(m.name)}`);
    const ds = await apiJson(`/api/datasets/${record.dataset_id}`).catch(() => null);
    const named = /flow rotation of the (.+?) family/.exec(ds?.description || '')?.[1];
    const fromBrowser = /fine-tuned in this browser/.test(ds?.description || '');
    const pick = families.find((f) => f.name === named && f.stored === fromBrowser)
      || families.find((f) => f.id === activeFamily()) || families[0];
    const sel = $('flows');
    sel.replaceChildren(...families.map((f) => new Option(familyLabel(f), f.id)));
    sel.value = pick.id;
    sel.disabled = false;
    if (named && pick.name !== named) {
      say($('message'), `This model was trained on ciphertexts of the "${named}" flows, which this browser does not have: its answers through ${pick.name} will be wrong.`, 'error');
    }
    if (ds?.description?.includes('route (b)')) $('route-b').checked = true;
    await useFlows(pick.id);
  } catch (err) { say($('message'), err.message, 'error'); }
  updateButtons();
}

async function useFlows(id) {
  state.info = null;
  updateButtons();
  $('flows-status').textContent = 'loading…';
  try {
    state.info = await loadFamily(state.call, id, progressTo($('flows-progress')));
    $('flows-status').textContent = `${state.info.classes.length} classes, ${state.info.agnostic ? 'per-class and class-agnostic flows' : 'per-class flows'}`;
    $('files-label').replaceChildren(...state.info.classes.map((c, k) => new Option(c, String(k))));
    $('route-b').disabled = !state.info.agnostic;
    document.body.dataset.flows = state.info.family;
    document.body.dataset.ready = 'true';
  } catch (err) {
    $('flows-status').textContent = '';
    say($('message'), `The flows could not be loaded: ${err.message}`, 'error');
  }
  updateButtons();
}
$('flows').addEventListener('change', (e) => useFlows(e.target.value));

function updateButtons() {
  $('run').disabled = !(state.info && state.key && state.model && state.entries.length);
}

function setEntries(entries) {
  state.entries = imageEntries(entries);
  $('picked').textContent = state.entries.length ? `${state.entries.length} images chosen.` : 'No images chosen.';
  updateButtons();
}
$('folder').addEventListener('change', (e) => setEntries(inputEntries(e.target)));
$('files').addEventListener('change', (e) => setEntries(inputEntries(e.target)));
bindDrop($('drop'), setEntries, (m) => say($('message'), m, 'error'));

// Sends ciphertexts to the model in batches; returns the probabilities, row-major [n, K].
async function query(cipher, n, onProgress, what) {
  const len = imageLen(state.info.shape);
  const k = state.model.classes.length;
  const out = new Float32Array(n * k);
  for (let s = 0; s < n; s += MAX_BATCH) {
    const e = Math.min(n, s + MAX_BATCH);
    const body = await state.call('imagesBatch', { values: cipher.slice(s * len, e * len) });
    const answer = await apiJson(`/api/models/${encodeURIComponent(state.model.name)}/classify`, {
      method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body,
    });
    answer.probabilities.forEach((row, i) => out.set(row, (s + i) * k));
    onProgress({ done: e, total: n, what });
  }
  return out;
}

$('run').addEventListener('click', async () => {
  const info = state.info;
  const route = document.querySelector('input[name=route]:checked').value;
  const onProgress = progressTo($('progress'), $('progress-label'));
  $('run').disabled = true;
  document.body.dataset.state = 'running';
  say($('message'), '', '');
  try {
    const entries = state.entries;
    const len = imageLen(info.shape);
    const known = entries.map((e) => (e.className === null ? -1 : info.classes.indexOf(e.className)));
    const fallback = Number($('files-label').value);
    const buffers = await Promise.all(entries.map(async (e) => new Uint8Array(await e.file.arrayBuffer())));
    const pixels = await state.call('decodeImages', { names: entries.map((e) => e.file.webkitRelativePath || e.file.name), buffers });
    const n = entries.length;
    const t0 = performance.now();
    let predicted, confidences = null;
    if (route === 'c') {
      const probs = [];
      for (let c = 0; c < info.classes.length; c++) {
        const cipher = await state.call('encryptAs', { pixels, size: len, cls: c }, { onProgress });
        probs.push(await query(cipher, n, onProgress, `querying the model with class ${info.classes[c]}'s encryptions`));
      }
      ({ labels: predicted, confidences } = await state.call('modelRouted', { probs, n }));
    } else {
      const labels = route === 'a' ? Uint32Array.from(known, (k) => (k >= 0 ? k : fallback)) : undefined;
      const cipher = await state.call('encrypt', { pixels, labels, size: len }, { onProgress });
      const probs = await query(cipher, n, onProgress, 'querying the model');
      const k = state.model.classes.length;
      predicted = Array.from({ length: n }, (_, i) => {
        const row = probs.subarray(i * k, (i + 1) * k);
        return row.indexOf(Math.max(...row));
      });
    }
    const seconds = (performance.now() - t0) / 1000;
    state.results = entries.map((e, i) => ({ file: e.file.webkitRelativePath || e.file.name, label: predicted[i], known: known[i], confidences: confidences?.[i] ?? null }));
    const withLabel = state.results.filter((r) => r.known >= 0);
    state.accuracy = withLabel.length ? withLabel.filter((r) => r.label === r.known).length / withLabel.length : null;
    $('accuracy').textContent = state.accuracy == null
      ? `${n} images classified in ${seconds.toFixed(1)} s.`
      : `${n} images classified in ${seconds.toFixed(1)} s: ${(100 * state.accuracy).toFixed(1)} % match their folder's class (route ${route}).`;
    renderResults(pixels, info);
    document.body.dataset.state = 'done';
    document.body.dataset.route = route;
  } catch (err) {
    document.body.dataset.state = 'failed';
    say($('message'), err.message, 'error');
  }
  updateButtons();
});

function renderResults(pixels, info) {
  const len = imageLen(info.shape);
  const head = document.createElement('tr');
  head.innerHTML = '<th>Image</th><th>File</th><th>Class</th><th>Known class</th><th>Confidence of each class’s encryption</th>';
  const rows = state.results.slice(0, 200).map((r, i) => {
    const tr = document.createElement('tr');
    const c = document.createElement('canvas');
    c.width = info.shape.width * 4; c.height = info.shape.height * 4;
    drawImage(c, pixels.subarray(i * len, (i + 1) * len), info.shape);
    const cells = [c, r.file, info.classes[r.label], r.known >= 0 ? `${info.classes[r.known]} ${r.known === r.label ? '✓' : '✗'}` : '—'];
    for (const v of cells) { const td = document.createElement('td'); td.append(v); tr.append(td); }
    const td = document.createElement('td');
    if (r.confidences) {
      const bars = document.createElement('span');
      bars.className = 'conf';
      bars.style.gridTemplateColumns = `repeat(${r.confidences.length}, 1.1rem)`;
      bars.title = r.confidences.map((p, k) => `${info.classes[k]}: ${(100 * p).toFixed(1)} %`).join(', ');
      for (const [k, p] of r.confidences.entries()) {
        const s = document.createElement('span');
        s.style.height = `${Math.max(1, p * 100)}%`;
        if (k === r.label) s.className = 'top';
        bars.append(s);
      }
      td.append(bars);
    } else td.textContent = '—';
    tr.append(td);
    return tr;
  });
  $('results').replaceChildren(head, ...rows);
}

start();
