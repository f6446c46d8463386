// The train page: upload a ciphertext container to the factory, start a job, follow it live.
// Everything sent here is public to the factory by design: ciphertexts, labels, a fingerprint.
import { apiJson, ownerEvents } from '../lib/api.js';
import { lineChart } from '../lib/chart.js';
import { $, say, definitions } from '../lib/dom.js';
import { startClient } from '../lib/rpc.js';
import { lastContainer } from '../lib/store.js';

const state = { call: null, bytes: null, summary: null, job: null, history: [], progress: null, source: null };
window.veilTrain = state;

async function start() {
  let client;
  try { client = await startClient(); } catch { return; }
  state.call = client.call;
  $('source').addEventListener('change', pickSource);
  $('container-file').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    if (file) await useBytes(new Uint8Array(await file.arrayBuffer()), file.name.replace(/\.safetensors$/, ''));
  });
  await pickSource();
  await refreshDatasets();
}

async function pickSource() {
  const fromFile = $('source').value === 'file';
  $('container-file').hidden = !fromFile;
  if (fromFile) { state.bytes = null; $('upload').disabled = true; $('dataset-summary').replaceChildren(); return; }
  const last = await lastContainer();
  if (!last) {
    say($('upload-message'), 'Nothing encrypted in this browser yet: encrypt a dataset first, or choose a file.', '');
    return;
  }
  await useBytes(last.bytes, last.name);
}

async function useBytes(bytes, name) {
  try {
    // Copied to the worker (not transferred): the page keeps `bytes` to upload.
    const { summary } = await state.call('readContainer', { bytes });
    if (summary.scheme === 'plain' || !summary.key_fingerprint) {
      throw new Error(`this file holds ${summary.scheme} images without a key fingerprint: it is not a ciphertext container, and this page does not upload plaintext`);
    }
    state.bytes = bytes;
    state.summary = summary;
    const s = summary.shape;
    const rows = [
      ['Images', `${summary.count} of ${s.channels}×${s.height}×${s.width}`],
      ['Classes', summary.classes.join(', ')],
      ['Scheme', summary.scheme],
      ['Key fingerprint', summary.key_fingerprint],
      ['Description', summary.description || '—'],
      ['Size', `${(bytes.length / 1024).toFixed(0)} KiB`],
    ];
    definitions($('dataset-summary'), rows);
    $('dataset-name').value = name.slice(0, 100);
    $('upload').disabled = false;
    say($('upload-message'), '', '');
  } catch (err) {
    state.bytes = null;
    $('upload').disabled = true;
    say($('upload-message'), `This dataset cannot be sent: ${err.message}`, 'error');
  }
}

$('upload').addEventListener('click', async () => {
  const name = $('dataset-name').value.trim() || 'encrypted';
  $('upload').disabled = true;
  $('upload-status').textContent = 'uploading…';
  try {
    const row = await apiJson(`/api/datasets?name=${encodeURIComponent(name)}`, {
      method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: state.bytes,
    });
    $('upload-status').textContent = '';
    say($('upload-message'), `Uploaded as ${row.id} (${row.count} images).`, 'ok');
    await refreshDatasets(row.id);
    document.body.dataset.dataset = row.id;
  } catch (err) {
    $('upload-status').textContent = '';
    say($('upload-message'), `Upload failed: ${err.message}`, 'error');
  }
  $('upload').disabled = !state.bytes;
});

async function refreshDatasets(select) {
  try {
    const rows = (await apiJson('/api/datasets')).filter((d) => d.scheme !== 'plain');
    const sel = $('dataset');
    sel.replaceChildren(...rows.map((d) => new Option(`${d.name} — ${d.id}, ${d.count} images, key ${d.key_fingerprint ?? '—'}`, d.id)));
    if (select) sel.value = select;
    $('train').disabled = rows.length === 0;
  } catch (err) { say($('job-message'), `The factory's datasets could not be listed: ${err.message}`, 'error'); }
}

// --- the job --------------------------------------------------------------------------------
$('train').addEventListener('click', async () => {
  const body = {
    dataset: $('dataset').value,
    arch: $('arch').value,
    epochs: Number($('epochs').value),
    batch_size: Number($('batch').value),
    learning_rate: Number($('lr').value),
    validation_split: Number($('validation').value),
    seed: Number($('seed').value),
  };
  $('train').disabled = true;
  state.history = [];
  state.progress = null;
  $('to-classify').hidden = true;
  try {
    const job = await apiJson('/api/jobs', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    state.job = job;
    document.body.dataset.job = job.id;
    follow(job.id, body.epochs);
  } catch (err) {
    say($('job-message'), `The job could not start: ${err.message}`, 'error');
    $('train').disabled = false;
  }
});

$('cancel').addEventListener('click', async () => {
  try { await apiJson(`/api/jobs/${state.job.id}/cancel`, { method: 'POST' }); } catch (err) {
    say($('job-message'), `Cancel failed: ${err.message}`, 'error');
  }
});

function follow(id, epochs) {
  $('cancel').disabled = false;
  $('job-progress').max = epochs;
  $('job-status').textContent = 'queued';
  let ended = false;
  const handlers = {
    snapshot(job) {
      state.history = job.history || [];
      draw();
    },
    progress(p) {
      state.progress = p;
      $('job-progress').max = p.epochs;
      $('job-progress').value = p.epoch - 1 + p.step / p.steps_per_epoch;
      $('job-status').textContent = `epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.steps_per_epoch}, loss ${p.loss.toFixed(3)}, accuracy ${(100 * p.accuracy).toFixed(1)} %`;
    },
    epoch(e) {
      state.history.push(e);
      draw();
    },
    state(s) {
      document.body.dataset.jobState = s.state;
      if (!['succeeded', 'failed', 'cancelled'].includes(s.state)) {
        $('job-status').textContent = s.state;
        return;
      }
      ended = true;
      $('cancel').disabled = true;
      $('train').disabled = false;
      if (s.state === 'succeeded') {
        $('job-progress').value = $('job-progress').max;
        const last = state.history[state.history.length - 1];
        const val = last && last.val_accuracy != null ? `, validation accuracy ${(100 * last.val_accuracy).toFixed(1)} %` : '';
        $('job-status').textContent = `done${val}`;
        say($('job-message'), `Model ${s.model_id} is ready. It reads ciphertexts made with key ${state.summary?.key_fingerprint ?? 'the dataset’s key'} only.`, 'ok');
        document.body.dataset.model = s.model_id;
        $('to-classify').href = `classify.html?model=${encodeURIComponent(s.model_id)}`;
        $('to-classify').hidden = false;
      } else {
        $('job-status').textContent = s.state;
        say($('job-message'), s.state === 'failed' ? `Training failed: ${s.error}` : 'Training was cancelled.', s.state === 'failed' ? 'error' : '');
      }
    },
  };
  ownerEvents(`/api/jobs/${id}/events`, (name, data) => handlers[name]?.(data), (err) => {
    if (!ended) say($('job-message'), `The connection to the factory was lost${err ? ` (${err.message})` : ''}; reload to follow the job again.`, 'error');
  });
}

function draw() {
  const h = state.history;
  const epochs = Math.max(Number($('epochs').value) || 1, h.length);
  const maxLoss = Math.max(0.5, ...h.map((p) => p.loss));
  const series = (colour, value) => ({ colour, points: h.map((p) => ({ x: p.epoch, y: value(p) ?? NaN })) });
  lineChart($('chart'), {
    x: { min: 0, max: epochs, label: 'epoch' },
    y: { min: 0, max: 1, grid: [0, 0.25, 0.5, 0.75, 1], format: (v) => `${Math.round(v * 100)} %` },
    series: [
      series('#2f5fd0', (p) => p.loss / maxLoss),
      series('#1b7a3d', (p) => p.accuracy),
      series('#d0762f', (p) => p.val_accuracy),
    ],
  });
}

draw();
start();
