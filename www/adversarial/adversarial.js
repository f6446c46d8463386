// The adversarial data encryption page: the owner's labelled images, the base model (the demo
// CNN, one trained here, or one imported) and the key stay in this page and its worker; the
// worker runs targeted L2 PGD toward the key's secret targets on WebGPU or the CPU; only the
// container of encrypted images (with labels and the key's fingerprint) leaves, by download or
// upload to the factory.
import { apiJson } from '../lib/api.js';
import { $, say, progressTo, download, definitions } from '../lib/dom.js';
import { imageCanvas, imageLen, shapeText } from '../lib/draw.js';
import { imageEntries, inputEntries, bindDrop, decodeEntries, labelsFor } from '../lib/files.js';
import { startKeyedPage } from '../lib/rpc.js';
import { keepContainer } from '../lib/store.js';

const DIGITS = [...'0123456789'];
const state = {
  call: null, key: null, shape: null, classes: null, originals: null, labels: null,
  entries: [], base: null, baseKind: 'demo', trained: null, encrypted: null, psnr: null, ssim: null,
  container: null, busy: false,
};
// For tests and the curious: what the page holds (the key is in the worker, not here).
window.veilAdversarial = state;

const parseShape = (v) => {
  const [channels, height, width] = v.split('x').map(Number);
  return { channels, height, width };
};
// Images per wasm call: small enough for steady progress and a prompt cancel.
const chunkOf = (s) => Math.max(8, Math.min(64, Math.floor(4096 / imageLen(s))));

const setState = (s) => { document.body.dataset.state = s; };

// ε of the L2 ball that gives `db` PSNR when the whole budget is spent (pixels in [0, 1]):
// MSE = ε²/d, so ε = √d · 10^(−dB/20) (as the library's `epsilon_for_psnr`).
function epsilonFor(shape, db) {
  return Math.sqrt(imageLen(shape)) * 10 ** (-db / 20);
}

function showEpsilon() {
  const shape = state.shape || parseShape($('shape').value);
  const db = Number($('psnr').value);
  $('epsilon').textContent = Number.isFinite(db) && db > 0 ? epsilonFor(shape, db).toFixed(3) : '–';
}
$('psnr').addEventListener('input', showEpsilon);

async function start() {
  const client = await startKeyedPage(state);
  if (!client) return;
  if (!client.key) say($('encrypt-message'), 'Load a key first: the secret targets are drawn from it.', 'error');
  showEpsilon();
  updateButtons();
}

function baseKind() {
  return document.querySelector('input[name="base"]:checked').value;
}

function demoFits() {
  const s = state.shape;
  return !!s && s.channels === 1 && s.height === 8 && s.width === 8
    && state.classes?.length === 10 && state.classes.every((c, i) => c === DIGITS[i]);
}

// Identifies the chosen images (a base model belongs to their shape and classes).
const datasetTag = () => (state.shape ? `${shapeText(state.shape)}:${state.classes.join('|')}` : null);

function updateButtons() {
  const have = !!(state.originals || state.entries.length);
  $('train').disabled = state.busy || !have;
  $('encrypt').disabled = state.busy || !state.key || !have;
  $('download').disabled = !state.container;
  $('upload').disabled = !state.container || state.busy;
  $('base-download').disabled = !(state.base && state.baseKind === 'train');
}

document.querySelectorAll('input[name="base"]').forEach((r) => r.addEventListener('change', () => {
  $('train-box').hidden = baseKind() !== 'train';
  $('import-box').hidden = baseKind() !== 'import';
  if (baseKind() === 'demo' && state.originals && !demoFits()) {
    say($('base-message'), `The demo model reads 8×8 grey digits of classes 0–9; these are ${shapeText(state.shape)} images of ${state.classes.length} classes. Train or import a base model.`, 'error');
  } else say($('base-message'), '', '');
  updateButtons();
}));

// --- choosing images ------------------------------------------------------------------------
function forget() {
  state.originals = null; state.labels = null; state.encrypted = null; state.container = null;
  $('pairs').replaceChildren(); $('summary').replaceChildren();
  $('to-train').hidden = true;
}

function pick(entries) {
  forget();
  state.entries = imageEntries(entries).filter((e) => e.className !== null);
  const classes = [...new Set(state.entries.map((e) => e.className))].sort();
  if (!state.entries.length) {
    $('picked').textContent = 'No labelled images: put them in one sub-folder per class.';
  } else if (classes.length < 2) {
    say($('images-message'), `The folder has one class (${classes[0]}): the scheme needs at least two, one sub-folder each.`, 'error');
    state.entries = [];
  } else {
    $('picked').textContent = `${state.entries.length} labelled images, ${classes.length} classes (${classes.join(', ')}).`;
    say($('images-message'), '', '');
  }
  state.pendingClasses = classes;
  updateButtons();
}
$('folder').addEventListener('change', (e) => pick(inputEntries(e.target)));
bindDrop($('drop'), pick, (m) => say($('images-message'), m, 'error'));

$('sample').addEventListener('click', async () => {
  forget();
  state.entries = [];
  const all = await state.call('sampleDigits', { n: 200 });
  state.shape = { channels: 1, height: 8, width: 8 };
  $('shape').value = '1x8x8';
  state.classes = DIGITS;
  state.originals = all.pixels;
  state.labels = all.labels;
  $('picked').textContent = '200 sample digits (UCI), 8×8 grey, classes 0–9.';
  showEpsilon();
  updateButtons();
});

// Reads the chosen folder (once per choice and shape) into state.originals.
async function readImages() {
  if (!state.entries.length) {
    if (!state.originals) throw new Error('choose a folder of labelled images first');
    return;
  }
  const shape = parseShape($('shape').value);
  if (state.originals && datasetTag() === `${shapeText(shape)}:${state.pendingClasses.join('|')}`) return;
  const classes = state.pendingClasses;
  const labels = labelsFor(state.entries, classes, 0);
  const pixels = await decodeEntries(state.call, state.entries, shape, progressTo($('encrypt-progress'), $('encrypt-label')), { flows: false });
  state.shape = shape;
  state.classes = classes;
  state.originals = pixels;
  state.labels = labels;
  showEpsilon();
}
$('shape').addEventListener('change', () => { if (state.entries.length) forget(); showEpsilon(); updateButtons(); });

// --- the base model -------------------------------------------------------------------------
$('train').addEventListener('click', async () => {
  state.busy = true; updateButtons();
  $('train-cancel').hidden = false;
  setState('training');
  try {
    await readImages();
    say($('base-message'), '', '');
    const epochs = Math.round(Number($('epochs').value));
    await state.call('adversarialTrainBegin', {
      pixels: state.originals, labels: state.labels, shape: state.shape, classes: state.classes,
      options: { epochs },
    });
    const p = await state.call('adversarialTrain', {}, {
      onProgress: ({ done, total, what, detail }) => {
        progressTo($('train-progress'), $('train-label'))({ done, total, what });
        if (detail && Number.isFinite(detail.loss)) {
          $('train-label').textContent += ` · loss ${detail.loss.toFixed(3)}, training accuracy ${(100 * detail.accuracy).toFixed(1)} %`;
        }
      },
    });
    state.base = await state.call('adversarialBaseModel', {});
    state.baseKind = 'train';
    state.baseFor = datasetTag();
    state.trained = p;
    const chance = 1 / state.classes.length;
    const acc = p.validation_accuracy;
    if (acc === null) {
      say($('base-message'), `Trained on ${p.train_images} images (none held out to measure it).`, 'ok');
    } else if (acc < chance * 1.5) {
      say($('base-message'), `The base model reads ${(100 * acc).toFixed(1)} % of ${p.validation_images} held-out images, near chance (${(100 * chance).toFixed(1)} %): PGD toward its classes will not mean much. Train longer, or bring more images or a better model.`, 'warn');
    } else {
      say($('base-message'), `Trained on ${p.train_images} images; it reads ${(100 * acc).toFixed(1)} % of ${p.validation_images} held-out images.`, 'ok');
    }
    document.body.dataset.baseAccuracy = String(acc ?? '');
    setState('trained');
  } catch (err) {
    say($('base-message'), err.message, 'error');
    setState(err.message.includes('cancelled') ? 'cancelled' : 'failed');
  } finally {
    state.busy = false;
    $('train-cancel').hidden = true;
    updateButtons();
  }
});
$('train-cancel').addEventListener('click', () => state.call('adversarialCancel', {}));

$('base-download').addEventListener('click', () => {
  download(`base-model-${shapeText(state.shape)}.bpk`, new Blob([state.base], { type: 'application/octet-stream' }));
});

$('base-file').addEventListener('change', async () => {
  const file = $('base-file').files[0];
  if (!file) return;
  state.base = new Uint8Array(await file.arrayBuffer());
  state.baseKind = 'import';
  state.baseFile = file.name;
  // Checked against the images' shape and classes when encryption is set up.
  state.baseFor = null;
  say($('base-message'), `${file.name} will be checked against your images when you encrypt.`, 'ok');
  updateButtons();
});

// --- encryption -----------------------------------------------------------------------------
$('encrypt').addEventListener('click', async () => {
  state.busy = true; updateButtons();
  $('cancel').hidden = false;
  setState('encrypting');
  say($('encrypt-message'), '', '');
  try {
    await readImages();
    const kind = baseKind();
    if (kind === 'demo' && !demoFits()) throw new Error(`the demo model reads 8×8 grey digits of classes 0–9; these are ${shapeText(state.shape)} images of ${state.classes.length} classes: train or import a base model`);
    if (kind === 'train' && (!state.base || state.baseKind !== 'train' || state.baseFor !== datasetTag())) throw new Error('train the base model on these images first');
    if (kind === 'import' && (!state.base || state.baseKind !== 'import')) throw new Error('choose a base model file first');
    const db = Number($('psnr').value);
    if (!(db > 0)) throw new Error('choose a PSNR above 0 dB');
    const setup = {
      shape: state.shape,
      classes: state.classes,
      epsilon: epsilonFor(state.shape, db),
      iterations: Math.round(Number($('iterations').value)),
      method: $('method').value || null,
    };
    const status = await state.call('adversarialBegin', { setup, base: kind === 'demo' ? null : state.base });
    state.status = status;
    const t0 = performance.now();
    const r = await state.call('adversarialEncrypt', {
      pixels: state.originals, labels: state.labels, size: chunkOf(state.shape),
    }, { onProgress: progressTo($('encrypt-progress'), $('encrypt-label')) });
    const ms = performance.now() - t0;
    state.encrypted = r.pixels;
    state.psnr = r.psnr;
    state.ssim = r.ssim;
    const bytes = await state.call('adversarialContainer', { encrypted: r.pixels, labels: state.labels });
    const name = `adversarial-${setup.method || 'basic'}-${state.key.fingerprint}`;
    state.container = { name, bytes };
    await keepContainer({ name, bytes, count: state.labels.length, fingerprint: state.key.fingerprint, scheme: 'adversarial' });
    showSummary(status, ms);
    showPairs();
    setState('encrypted');
  } catch (err) {
    say($('encrypt-message'), err.message, 'error');
    setState(err.message.includes('cancelled') ? 'cancelled' : 'failed');
  } finally {
    state.busy = false;
    $('cancel').hidden = true;
    updateButtons();
  }
});
$('cancel').addEventListener('click', () => state.call('adversarialCancel', {}));

const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
const finite = (v) => v.filter(Number.isFinite);

function showSummary(status, ms) {
  const n = state.labels.length;
  const psnr = finite(state.psnr);
  const rows = [
    ['Images', `${n} of ${shapeText(state.shape)}, ${state.classes.length} classes`],
    ['Method', `${status.setup.method || 'basic'}; ε ${status.pgd.epsilon.toFixed(3)}, step ${status.pgd.step.toFixed(3)}, ${status.pgd.iterations} PGD steps`],
    ['Base model', status.demo_base ? 'the demo digits CNN' : state.baseKind === 'train' ? 'trained in this page' : `imported (${state.baseFile})`],
    ['Mean PSNR', psnr.length ? `${mean(psnr).toFixed(2)} dB (min ${Math.min(...psnr).toFixed(2)} dB${psnr.length < n ? `; ${n - psnr.length} unchanged` : ''})` : 'every image unchanged'],
    ['Mean SSIM', `${mean(state.ssim).toFixed(4)} (min ${Math.min(...state.ssim).toFixed(4)})`],
    ['Key fingerprint', state.key.fingerprint],
    ['Time', `${(ms / 1000).toFixed(1)} s (${(n / (ms / 1000)).toFixed(1)} images/s on ${document.getElementById('backend').dataset.backend})`],
    ['Container', `${(state.container.bytes.length / 1024).toFixed(0)} KiB: encrypted images (f32), labels, the key's fingerprint`],
  ];
  definitions($('summary'), rows);
  document.body.dataset.meanPsnr = psnr.length ? mean(psnr).toFixed(3) : 'inf';
}

function canvasOf(pixels, shape) {
  return imageCanvas(pixels, shape, Math.max(48, shape.width * 2), Math.max(48, shape.height * 2));
}

function showPairs() {
  const a = imageLen(state.shape);
  const n = state.labels.length;
  const shown = Math.min(24, n);
  $('pairs').replaceChildren(...Array.from({ length: shown }, (_, j) => {
    const i = Math.floor((j * n) / shown);
    const o = state.originals.subarray(i * a, (i + 1) * a);
    const e = state.encrypted.subarray(i * a, (i + 1) * a);
    let top = 0;
    for (let p = 0; p < a; p++) top = Math.max(top, Math.abs(e[p] - o[p]));
    const diff = new Float32Array(a);
    for (let p = 0; p < a; p++) diff[p] = 0.5 + (top > 0 ? (0.5 * (e[p] - o[p])) / top : 0);
    const fig = document.createElement('figure');
    const cap = document.createElement('figcaption');
    cap.textContent = `${state.classes[state.labels[i]]} · ${Number.isFinite(state.psnr[i]) ? state.psnr[i].toFixed(1) : '∞'} dB · SSIM ${state.ssim[i].toFixed(3)}`;
    const row = document.createElement('span');
    row.append(canvasOf(o, state.shape), canvasOf(e, state.shape), canvasOf(diff, state.shape));
    fig.append(row, cap);
    return fig;
  }));
}

// --- sending --------------------------------------------------------------------------------
$('download').addEventListener('click', () => {
  const { name, bytes } = state.container;
  download(`${name}.safetensors`, new Blob([bytes], { type: 'application/octet-stream' }));
});

$('upload').addEventListener('click', async () => {
  $('upload').disabled = true;
  try {
    const row = await apiJson(`/api/datasets?name=${encodeURIComponent(state.container.name.slice(0, 100))}`, {
      method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: state.container.bytes,
    });
    say($('send-message'), `Uploaded as ${row.id} (${row.count} images). Train a model on it in the factory.`, 'ok');
    document.body.dataset.dataset = row.id;
    $('to-train').hidden = false;
    setState('uploaded');
  } catch (err) {
    say($('send-message'), `Upload failed: ${err.message}`, 'error');
    $('upload').disabled = false;
  }
});

start();
