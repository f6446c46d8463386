// The OWSD page: images are embedded (the demo CNN's penultimate layer and any encoders the owner
// imports) and scrambled by the key's random generators in the worker, one per encoder; only the
// scrambled images go to the cloud's classifier; the internal network, trained here, reads the
// owner's label from [embeddings ‖ cloud vectors]. The key counts what it scrambles; the count
// lives in IndexedDB (store `owsd`) and comes back on reload.
import { apiJson } from '../lib/api.js';
import { $, say, progressTo, definitions } from '../lib/dom.js';
import { imageCanvas, imageLen } from '../lib/draw.js';
import { imageEntries, inputEntries, bindDrop, decodeEntries } from '../lib/files.js';
import { startKeyedPage } from '../lib/rpc.js';
import { owsdRecord, storeOwsdRecord } from '../lib/store.js';

// The demo CNN, the default encoder, reads 8×8 grey digits (at the UCI digits' grey levels, which
// the library picks for this shape).
const ENCODER_SHAPE = { channels: 1, height: 8, width: 8 };
const MAX_BATCH = 1024; // the cloud's limit per request

const state = {
  call: null, key: null, clouds: [], cloud: null, status: null, record: null,
  sample: null, sampleEntries: [], newImages: null, newEntries: [], iin: null, results: null, sent: 0,
  // Encoder 0 is the demo CNN's layer; imported ones follow, by index.
  encoders: [{ index: 0, name: 'the demo CNN', embedding: 64 }],
};
window.veilOwsd = state;


async function start() {
  if (!(await startKeyedPage(state))) return;
  try {
    state.clouds = (await apiJson('/api/models')).filter((m) => m.scheme === 'plain');
    const sel = $('cloud');
    sel.replaceChildren(...state.clouds.map((m) => new Option(
      `${m.name}: ${m.arch} on ${m.dataset}, ${m.classes.length} labels, ${m.input.channels}×${m.input.height}×${m.input.width}`, m.name,
    )));
    if (!state.clouds.length) throw new Error('the cloud has no classifier of plain images');
    sel.disabled = false;
    sel.addEventListener('change', chooseCloud);
    await chooseCloud();
  } catch (err) { say($('key-message'), `The cloud's models could not be listed: ${err.message}`, 'error'); }
}

// The encoders ticked, in the order of their embeddings in a row.
function chosenEncoders() {
  const ticked = [...document.querySelectorAll('#encoders input[data-encoder]:checked')].map((i) => Number(i.dataset.encoder));
  return state.encoders.filter((e) => ticked.includes(e.index));
}

$('encoders').addEventListener('change', async () => {
  state.iin = null;
  if (!chosenEncoders().length) say($('encoder-message'), 'Tick at least one encoder.', 'error');
  else say($('encoder-message'), '', '');
  if (state.key && state.cloud && chosenEncoders().length) {
    try { await begin(); } catch (err) { say($('encoder-message'), err.message, 'error'); }
  }
  updateButtons();
});

$('encoder-file').addEventListener('change', async () => {
  const file = $('encoder-file').files[0];
  if (!file) return;
  try {
    const r = await state.call('importEncoder', { name: file.name, bytes: await file.arrayBuffer() });
    state.encoders.push({ index: r.index, name: r.name, embedding: r.info.embedding });
    const li = document.createElement('li');
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.dataset.encoder = String(r.index);
    box.checked = true;
    const c = r.info.config;
    label.append(box, ` ${r.name}: ${c.base_filters} filters, ${r.info.embedding}-value embeddings, ${r.info.layout} layout${r.info.head ? '' : ', no classifier head'}${r.info.ignored.length ? ` (ignored: ${r.info.ignored.join(', ')})` : ''}`);
    li.append(label);
    $('encoders').append(li);
    $('encoders').dispatchEvent(new Event('change'));
    say($('encoder-message'), `Imported ${r.name}.`, 'ok');
  } catch (err) { say($('encoder-message'), err.message, 'error'); }
  $('encoder-file').value = '';
});

async function chooseCloud() {
  state.cloud = state.clouds.find((m) => m.name === $('cloud').value);
  state.iin = null;
  $('label-ratio').textContent = `This cloud knows ${state.cloud.classes.length} labels; the paper's key factor is your labels over the cloud's.`;
  if (!state.key) {
    say($('key-message'), 'Load a key first: the scramble generator is drawn from it.', 'error');
    updateButtons();
    return;
  }
  try {
    state.record = await owsdRecord(state.key.fingerprint, await state.call('owsdUsage', {}));
    await begin();
  } catch (err) { say($('key-message'), err.message, 'error'); }
  updateButtons();
}

// Sets the scrambler up for the kept generation and count (and the cloud's input shape).
async function begin() {
  const r = state.record;
  state.status = await state.call('scrambleBegin', {
    setup: { encoders: chosenEncoders().map((e) => e.embedding), output: state.cloud.input, generation: r.generation },
    usage: r.usage,
  });
  showUsage();
}

function showUsage() {
  const u = state.status.usage;
  $('generation').textContent = String(state.status.generation);
  $('used').textContent = String(u.used);
  $('budget-shown').textContent = String(u.budget);
  $('budget').value = String(u.budget);
  document.body.dataset.used = String(u.used);
  document.body.dataset.generation = String(state.status.generation);
}

// Keeps the count after every batch, before anything is sent.
async function keep(usage) {
  state.record = { ...state.record, usage };
  state.status = { ...state.status, usage };
  await storeOwsdRecord(state.key.fingerprint, state.record);
  showUsage();
}

$('set-budget').addEventListener('click', async () => {
  const budget = Math.round(Number($('budget').value));
  try {
    const usage = { ...(await state.call('owsdUsage', { budget })), used: state.record.usage.used };
    state.record = { ...state.record, usage };
    await storeOwsdRecord(state.key.fingerprint, state.record);
    await begin();
    say($('key-message'), `Budget set to ${budget} images.`, 'ok');
  } catch (err) { say($('key-message'), err.message, 'error'); }
});

$('rotate').addEventListener('click', async () => {
  if (!confirm('Rotate the key? Images scrambled from now on use a new generator, and the internal network must be trained again.')) return;
  try {
    const usage = await state.call('owsdUsage', { budget: state.record.usage.budget });
    state.record = {
      generation: state.record.generation + 1,
      usage,
      retired: [...(state.record.retired || []), { generation: state.record.generation, used: state.record.usage.used }],
    };
    await storeOwsdRecord(state.key.fingerprint, state.record);
    state.iin = null;
    await begin();
    say($('key-message'), `Rotated: generation ${state.record.generation}. Train the internal network again.`, 'ok');
  } catch (err) { say($('key-message'), err.message, 'error'); }
  updateButtons();
});

function updateButtons() {
  const ready = !!(state.status && state.cloud && chosenEncoders().length);
  $('set-budget').disabled = !ready;
  $('rotate').disabled = !ready;
  $('train').disabled = !(ready && (state.sample || state.sampleEntries.length));
  $('classify').disabled = !(ready && state.iin && (state.newImages || state.newEntries.length));
}

// --- choosing images ------------------------------------------------------------------------
function pickSample(entries) {
  state.sample = null;
  state.sampleEntries = imageEntries(entries).filter((e) => e.className !== null);
  const labels = [...new Set(state.sampleEntries.map((e) => e.className))].sort();
  $('sample-picked').textContent = state.sampleEntries.length
    ? `${state.sampleEntries.length} labelled images, ${labels.length} labels.`
    : 'No labelled images (put them in one sub-folder per label).';
  updateButtons();
}
$('sample-folder').addEventListener('change', (e) => pickSample(inputEntries(e.target)));
bindDrop($('drop-sample'), pickSample, (m) => say($('train-message'), m, 'error'));

$('sample-digits').addEventListener('click', async () => {
  const all = await state.call('sampleDigits', { n: 550 });
  const len = imageLen(ENCODER_SHAPE);
  state.sampleEntries = [];
  state.sample = { pixels: all.pixels.slice(0, 350 * len), labels: all.labels.slice(0, 350), classes: [...'0123456789'] };
  state.newDigits = { pixels: all.pixels.slice(350 * len), labels: all.labels.slice(350), classes: [...'0123456789'] };
  $('sample-picked').textContent = '350 sample digits chosen (about 35 per label).';
  updateButtons();
});

function pickNew(entries) {
  state.newImages = null;
  state.newEntries = imageEntries(entries);
  $('new-picked').textContent = state.newEntries.length ? `${state.newEntries.length} images chosen.` : 'No images chosen.';
  updateButtons();
}
$('new-folder').addEventListener('change', (e) => pickNew(inputEntries(e.target)));
$('new-files').addEventListener('change', (e) => pickNew(inputEntries(e.target)));
bindDrop($('drop-new'), pickNew, (m) => say($('classify-message'), m, 'error'));
$('new-digits').addEventListener('click', async () => {
  if (!state.newDigits) {
    const all = await state.call('sampleDigits', { n: 550 });
    const len = imageLen(ENCODER_SHAPE);
    state.newDigits = { pixels: all.pixels.slice(350 * len), labels: all.labels.slice(350), classes: [...'0123456789'] };
  }
  state.newEntries = [];
  state.newImages = state.newDigits;
  $('new-picked').textContent = '200 sample digits chosen (not in the 350).';
  updateButtons();
});

// --- the pipeline -----------------------------------------------------------------------------
async function readImages(entries, onProgress) {
  return decodeEntries(state.call, entries, ENCODER_SHAPE, onProgress, { flows: false });
}

// Embeds (by every chosen encoder) and scrambles `pixels` here (counted first), then sends only
// the scrambled images to the cloud; returns {emb, scrambled, cloud, e}: with E encoders, image i's
// scramble by encoder j is at i·E + j, and its cloud vector too, so `cloud` is [N, E·K] rows.
async function scrambleAndAsk(pixels, onProgress) {
  const encoders = chosenEncoders();
  const emb = await state.call('embed', { pixels, encoders: encoders.map((e) => e.index) });
  const out = await state.call('scramble', { embeddings: emb, force: $('force').checked });
  await keep(out.usage);
  if (out.warning) say($('key-message'), out.warning, 'error');
  const len = imageLen(state.cloud.input);
  const k = state.cloud.classes.length;
  const n = out.pixels.length / len; // images sent: N·E
  const cloud = new Float32Array(n * k);
  for (let s = 0; s < n; s += MAX_BATCH) {
    const e = Math.min(n, s + MAX_BATCH);
    const images = [];
    for (let i = s; i < e; i++) images.push(Array.from(out.pixels.subarray(i * len, (i + 1) * len)));
    const answer = await apiJson(state.cloud.classify_url, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ images }),
    });
    answer.probabilities.forEach((row, i) => cloud.set(row, (s + i) * k));
    state.sent += e - s;
    onProgress({ done: e, total: n, what: 'asking the cloud' });
  }
  return { emb, scrambled: out.pixels, cloud, e: encoders.length };
}

$('train').addEventListener('click', async () => {
  document.body.dataset.state = 'training';
  $('train').disabled = true;
  const onProgress = progressTo($('train-progress'), $('train-label'));
  try {
    let { sample } = state;
    if (!sample) {
      const classes = [...new Set(state.sampleEntries.map((e) => e.className))].sort();
      const labels = Uint32Array.from(state.sampleEntries, (e) => classes.indexOf(e.className));
      sample = { pixels: await readImages(state.sampleEntries, onProgress), labels, classes };
    }
    const { emb, scrambled, cloud, e } = await scrambleAndAsk(sample.pixels, onProgress);
    showPairs(sample.pixels, scrambled, sample.labels.length, e);
    $('train-label').textContent = 'training the internal network…';
    const report = await state.call('iinTrain', { embeddings: emb, cloud, labels: sample.labels, classes: sample.classes });
    state.iin = { report, classes: sample.classes, generation: state.status.generation, encoders: chosenEncoders().map((x) => x.index).join(',') };
    $('train-label').textContent = 'done';
    document.body.dataset.state = 'trained';
    say($('train-message'), `Trained on ${sample.labels.length} images: validation accuracy ${(100 * report.validation_accuracy).toFixed(1)} % (epoch ${report.best_epoch} of ${report.epochs}).`, 'ok');
  } catch (err) {
    document.body.dataset.state = 'failed';
    say($('train-message'), err.message, 'error');
  }
  updateButtons();
});

$('classify').addEventListener('click', async () => {
  document.body.dataset.state = 'classifying';
  $('classify').disabled = true;
  const onProgress = progressTo($('classify-progress'), $('classify-label'));
  try {
    if (state.iin.generation !== state.status.generation) throw new Error('the key was rotated since the internal network was trained: train it again');
    if (state.iin.encoders !== chosenEncoders().map((x) => x.index).join(',')) throw new Error('the encoders changed since the internal network was trained: train it again');
    let images = state.newImages;
    if (!images) {
      images = { pixels: await readImages(state.newEntries, onProgress), labels: null, classes: state.iin.classes };
      const known = state.newEntries.every((e) => e.className !== null && state.iin.classes.includes(e.className));
      if (known) images.labels = Uint32Array.from(state.newEntries, (e) => state.iin.classes.indexOf(e.className));
    }
    const { emb, scrambled, cloud, e } = await scrambleAndAsk(images.pixels, onProgress);
    const { labels } = await state.call('iinPredict', { embeddings: emb, cloud });
    const k = state.cloud.classes.length;
    const n = labels.length;
    // The cloud's top class for the first encoder's scramble of each image.
    const cloudTop = Array.from({ length: n }, (_, i) => {
      const o = i * e * k;
      let best = 0;
      for (let j = 1; j < k; j++) if (cloud[o + j] > cloud[o + best]) best = j;
      return state.cloud.classes[best];
    });
    let accuracy = null;
    if (images.labels) accuracy = labels.reduce((a, l, i) => a + (l === images.labels[i] ? 1 : 0), 0) / n;
    state.results = { labels, cloudTop, accuracy };
    showResults(images, scrambled, labels, cloudTop, e);
    $('classify-label').textContent = 'done';
    definitions($('summary'), [
      ['Images', String(n)],
      ['Accuracy (internal network)', accuracy === null ? 'unknown (no labels)' : `${(100 * accuracy).toFixed(1)} %`],
      ['Sent to the cloud', `${state.sent} scrambled images, nothing else`],
    ]);
    document.body.dataset.state = 'classified';
    say($('classify-message'), `Classified ${n} images.`, 'ok');
  } catch (err) {
    document.body.dataset.state = 'failed';
    say($('classify-message'), err.message, 'error');
  }
  updateButtons();
});

function canvasOf(pixels, shape) {
  return imageCanvas(pixels, shape, shape.width * 5, shape.height * 5);
}

// Image i's E scrambles (one per encoder), side by side.
function scramblesOf(scrambled, i, e) {
  const b = imageLen(state.cloud.input);
  const span = document.createElement('span');
  for (let j = 0; j < e; j++) span.append(canvasOf(scrambled.subarray((i * e + j) * b, (i * e + j + 1) * b), state.cloud.input));
  return span;
}

function showPairs(originals, scrambled, n, e) {
  const a = imageLen(ENCODER_SHAPE);
  const shown = Math.min(24, n);
  $('pairs').replaceChildren(...Array.from({ length: shown }, (_, j) => {
    const i = Math.floor((j * n) / shown); // spread over the sample (it is in label order)
    const fig = document.createElement('figure');
    fig.append(canvasOf(originals.subarray(i * a, (i + 1) * a), ENCODER_SHAPE), scramblesOf(scrambled, i, e));
    return fig;
  }));
}

function showResults(images, scrambled, labels, cloudTop, e) {
  const a = imageLen(ENCODER_SHAPE);
  const rows = Array.from({ length: Math.min(40, labels.length) }, (_, i) => {
    const tr = document.createElement('tr');
    const cells = [
      canvasOf(images.pixels.subarray(i * a, (i + 1) * a), ENCODER_SHAPE),
      scramblesOf(scrambled, i, e),
      state.iin.classes[labels[i]],
      cloudTop[i],
      images.labels ? state.iin.classes[images.labels[i]] : '–',
    ];
    tr.replaceChildren(...cells.map((c) => {
      const td = document.createElement('td');
      if (typeof c === 'string') td.textContent = c; else td.append(c);
      return td;
    }));
    return tr;
  });
  $('results').tBodies[0].replaceChildren(...rows);
}

start();
