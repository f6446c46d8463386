// The encrypt page: labelled images in, a container of flow-rotation ciphertexts out. Pixels and
// the key stay in this page and its worker; the container holds ciphertexts, labels and the key's
// fingerprint, and goes to the IndexedDB outbox (for the train page) or to a download.
import { flowFamilies, loadFamily, familyLabel, activeFamily, setActiveFamily } from './families.js';
import { $, say, showKey, progressTo, download, definitions } from '../lib/dom.js';
import { drawImage, imageLen, shapeText } from '../lib/draw.js';
import { imageEntries, inputEntries, bindDrop, labelsFor, decodeEntries } from '../lib/files.js';
import { startClient } from '../lib/rpc.js';
import { keepContainer } from '../lib/store.js';

const state = { call: null, info: null, entries: [], originals: null, labels: null, container: null, done: false };
// For tests and the curious: what the page holds (no key material is in it).
window.veilEncrypt = state;

// The sample digits fit flows of 1×8×8 images with the ten digit classes.
function isDigitsShape(info) {
  const s = info.shape;
  return s.channels === 1 && s.height === 8 && s.width === 8 && info.classes.join('') === '0123456789';
}

async function start() {
  let client;
  try { client = await startClient(); } catch { return; }
  state.call = client.call;
  useKey(client.key);
  try {
    const families = await flowFamilies();
    const sel = $('family');
    sel.replaceChildren(...families.map((f) => new Option(familyLabel(f), f.id)));
    if (families.some((f) => f.id === activeFamily())) sel.value = activeFamily();
    sel.disabled = false;
    sel.addEventListener('change', () => loadFlows(sel.value));
    await loadFlows(sel.value);
  } catch (err) { say($('message'), `The flows could not be loaded: ${err.message}`, 'error'); }
}

function useKey(key) {
  showKey($('key'), key);
  state.key = key;
  updateButtons();
}

async function loadFlows(id) {
  state.info = null;
  updateButtons();
  $('flows-status').textContent = 'loading…';
  try {
    const info = await loadFamily(state.call, id, progressTo($('flows-progress')));
    state.info = info;
    setActiveFamily(id);
    const enc = info.encryption;
    const how = enc.temperature === 1 && !enc.cover_classes
      ? "the paper's Algorithm 1"
      : `latent temperature τ = ${enc.temperature}${enc.cover_classes ? ', cover classes (each class looks like another)' : ''}`;
    $('flows-status').textContent = `loaded (${info.agnostic ? 'per-class and class-agnostic flows' : 'per-class flows'}; encryption: ${how})`;
    $('class-names').textContent = info.classes.join(', ');
    $('shape').textContent = `${shapeText(info.shape)} with ${info.bins} grey levels`;
    $('files-label').replaceChildren(...info.classes.map((c, k) => new Option(c, String(k))));
    $('route').querySelector('[value=agnostic]').disabled = !info.agnostic;
    $('sample-row').hidden = !isDigitsShape(info);
    document.body.dataset.flows = info.family;
  } catch (err) {
    $('flows-status').textContent = '';
    say($('message'), `The flows could not be loaded: ${err.message}`, 'error');
  }
  updateButtons();
}

function updateButtons() {
  $('encrypt').disabled = !(state.info && state.key && state.entries.length);
  $('check').disabled = !(state.info && state.key);
}

// --- choosing images ------------------------------------------------------------------------
function setEntries(entries) {
  state.sample = null;
  state.entries = imageEntries(entries);
  const skipped = entries.length - state.entries.length;
  const classes = new Map();
  for (const e of state.entries) {
    const c = e.className ?? '(label chosen below)';
    classes.set(c, (classes.get(c) || 0) + 1);
  }
  $('picked').textContent = state.entries.length
    ? `${state.entries.length} images: ${[...classes].map(([c, n]) => `${c} × ${n}`).join(', ')}${skipped ? `; ${skipped} other files skipped` : ''}.`
    : 'No images chosen.';
  say($('message'), '', '');
  updateButtons();
}

$('sample').addEventListener('click', async () => {
  try {
    state.sample = await state.call('sampleDigits', { n: Number($('sample-count').value) });
    state.entries = Array.from(state.sample.labels, (l, i) => ({ file: { name: `sample-${i}.png` }, className: state.info.classes[l] }));
    $('picked').textContent = `${state.entries.length} sample digits chosen.`;
    say($('message'), '', '');
  } catch (err) { say($('message'), err.message, 'error'); }
  updateButtons();
});

$('folder').addEventListener('change', (e) => setEntries(inputEntries(e.target)));
$('files').addEventListener('change', (e) => setEntries(inputEntries(e.target)));
bindDrop($('drop'), setEntries, (m) => say($('message'), m, 'error'));

// --- encrypting -----------------------------------------------------------------------------
$('encrypt').addEventListener('click', async () => {
  const info = state.info;
  const agnostic = $('route').value === 'agnostic';
  $('encrypt').disabled = true;
  state.done = false;
  document.body.dataset.state = 'encrypting';
  const onProgress = progressTo($('progress'), $('progress-label'));
  try {
    const allLabels = labelsFor(state.entries, info.classes, Number($('files-label').value));
    const size = imageLen(info.shape);
    const decoded = state.sample ? state.sample.pixels : await decodeEntries(state.call, state.entries, info.shape, onProgress);
    const t0 = performance.now();
    const answer = await state.call('encryptChecked', {
      pixels: decoded, labels: agnostic ? undefined : allLabels, size,
    }, { onProgress });
    const ms = performance.now() - t0;
    // Images the flows cannot encrypt are left out, named, and the rest go on.
    const { kept, failures } = answer;
    const cipher = answer.ciphertexts;
    const nameOf = (i) => (state.sample ? `sample digit ${i}` : (state.entries[i]?.file?.name ?? `image ${i}`));
    if (kept.length === 0) {
      throw new Error(`None of the ${allLabels.length} images can be encrypted with these flows (${failures[0]?.reason}). Fine-tune the flows on your images first.`);
    }
    const labels = Uint32Array.from(kept, (i) => allLabels[i]);
    const originals = new Float32Array(kept.length * size);
    kept.forEach((i, k) => originals.set(decoded.subarray(i * size, (i + 1) * size), k * size));
    state.failures = failures.map((f) => ({ ...f, name: nameOf(f.index) }));
    state.originals = originals;
    state.labels = labels;
    state.ciphertexts = cipher;
    state.agnostic = agnostic;
    offerAttack();
    showPairs($('pairs'), originals, cipher, labels, info);
    const bytes = await state.call('flowContainer', { ciphertexts: cipher, labels, agnostic });
    const name = `${info.family}-${agnostic ? 'agnostic' : 'per-class'}-${state.key.fingerprint}`;
    state.container = { name, bytes };
    await keepContainer({ name, bytes, count: labels.length, fingerprint: state.key.fingerprint, agnostic, family: info.family });
    showSummary([
      ['Images', failures.length
        ? `${labels.length} of ${allLabels.length} (${(100 * labels.length / allLabels.length).toFixed(1)} % encryptable; left out: ${state.failures.slice(0, 5).map((f) => f.name).join(', ')}${failures.length > 5 ? ', …' : ''})`
        : String(labels.length)],
      ['Route', agnostic ? '(b) class-agnostic flow' : '(a) one flow and key per class'],
      ['Key fingerprint', state.key.fingerprint],
      ['Encryption time', `${(ms / 1000).toFixed(2)} s (${Math.round(labels.length / (ms / 1000))} images/s on ${document.getElementById('backend').dataset.backend})`],
      ['Container', `${(bytes.length / 1024).toFixed(0)} KiB: ciphertexts (f32), labels, the key's fingerprint`],
    ]);
    $('download').disabled = false;
    $('to-train').hidden = false;
    state.done = true;
    document.body.dataset.state = 'encrypted';
    if (failures.length) {
      say($('message'), `Encrypted ${labels.length} of ${allLabels.length} images. ${failures.length} cannot be encrypted with these flows and were left out (${state.failures[0].name}: ${failures[0].reason}); fine-tuning the flows on your images makes more of them encryptable. The dataset is ready to download or to send to the factory.`, 'warn');
    } else {
      say($('message'), `Encrypted ${labels.length} images. The dataset is ready to download or to send to the factory.`, 'ok');
    }
  } catch (err) {
    document.body.dataset.state = 'failed';
    say($('message'), err.message, 'error');
  }
  updateButtons();
});

function showSummary(rows) {
  definitions($('summary'), rows);
}

function showPairs(el, top, bottom, labels, info, count = 24) {
  const len = imageLen(info.shape);
  const n = Math.min(count, labels.length);
  const scale = Math.max(2, Math.floor(48 / info.shape.width));
  el.replaceChildren(...Array.from({ length: n }, (_, i) => {
    const fig = document.createElement('figure');
    for (const src of [top, bottom]) {
      const c = document.createElement('canvas');
      c.width = info.shape.width * scale;
      c.height = info.shape.height * scale;
      drawImage(c, src.subarray(i * len, (i + 1) * len), info.shape);
      fig.append(c);
    }
    const cap = document.createElement('figcaption');
    cap.textContent = info.classes[labels[i]];
    fig.append(cap);
    return fig;
  }));
}

// --- attacking: known pairs -----------------------------------------------------------------
// The attacker's side runs in the worker without the key: the public flows, n (image, ciphertext)
// pairs of one class and the victims' ciphertexts go in, the victims' decryptions come out. The
// originals of the victims are used here only to score them.

// Images of the attacked class in the set: route (a) has a key per class, route (b) one for all.
function attackIndices(cls) {
  const all = Array.from(state.labels.keys());
  return cls === undefined ? all : all.filter((i) => state.labels[i] === cls);
}

function offerAttack() {
  const sel = $('attack-class');
  const info = state.info;
  $('attack-rows').replaceChildren();
  say($('attack-message'), '', '');
  if (state.agnostic) {
    sel.replaceChildren(new Option(`every class (route b: one key for all ${state.labels.length} images)`, 'all'));
  } else {
    const counts = info.classes.map((_, k) => state.labels.reduce((n, l) => n + (l === k), 0));
    const options = info.classes.map((c, k) => ({ c, k, n: counts[k] })).filter((o) => o.n >= 2);
    sel.replaceChildren(...options.map((o) => new Option(`class ${o.c} (${o.n} images)`, String(o.k))));
    const most = options.reduce((b, o) => (o.n > b.n ? o : b), options[0]);
    if (most) sel.value = String(most.k);
  }
  sel.disabled = sel.options.length === 0;
  $('attack-run').disabled = sel.disabled;
}

// The pair counts shown: 1, 4, 16, m/4, m/2, m and 2m as the set allows, and all it has.
function pairCounts(m, available) {
  const ns = [1, 4, 16, m / 4, m / 2, m, 2 * m].filter((n) => Number.isInteger(n) && n <= available);
  if (available < 2 * m && !ns.includes(available)) ns.push(available);
  return [...new Set(ns)].sort((a, b) => a - b);
}

function gather(source, indices, len) {
  const out = new Float32Array(indices.length * len);
  indices.forEach((i, k) => out.set(source.subarray(i * len, (i + 1) * len), k * len));
  return out;
}

function attackRow(label, pixels, info, count) {
  const row = document.createElement('div');
  row.className = 'attack-row';
  const text = document.createElement('span');
  text.textContent = label;
  row.append(text);
  const len = imageLen(info.shape);
  const scale = Math.max(2, Math.floor(40 / info.shape.width));
  for (let i = 0; i < count; i++) {
    const c = document.createElement('canvas');
    c.width = info.shape.width * scale;
    c.height = info.shape.height * scale;
    drawImage(c, pixels.subarray(i * len, (i + 1) * len), info.shape);
    row.append(c);
  }
  $('attack-rows').append(row);
  return row;
}

// Per victim: PSNR (dB, peak 1) and whether every pixel is on its original's level.
function score(decrypted, originals, len, levels) {
  const half = 0.5 / Math.max(1, levels - 1);
  const per = [];
  for (let v = 0; v < originals.length / len; v++) {
    let se = 0;
    let worst = 0;
    for (let j = v * len; j < (v + 1) * len; j++) {
      const d = decrypted[j] - originals[j];
      se += d * d;
      worst = Math.max(worst, Math.abs(d));
    }
    per.push({ psnr: se === 0 ? Infinity : 10 * Math.log10(len / se), exact: worst < half });
  }
  const finite = per.map((p) => Math.min(p.psnr, 100));
  return { psnr: finite.reduce((a, b) => a + b, 0) / per.length, exact: per.filter((p) => p.exact).length };
}

$('attack-run').addEventListener('click', async () => {
  const info = state.info;
  const value = $('attack-class').value;
  const cls = value === 'all' ? undefined : Number(value);
  const len = imageLen(info.shape);
  const idx = attackIndices(cls);
  const victims = Math.min(8, Math.max(1, Math.floor(idx.length / 4)));
  const pool = idx.slice(0, idx.length - victims);
  const victimIdx = idx.slice(idx.length - victims);
  const ns = pairCounts(len, pool.length);
  const victimsCt = gather(state.ciphertexts, victimIdx, len);
  const victimsPlain = gather(state.originals, victimIdx, len);
  const name = cls === undefined ? 'the class-agnostic key' : `class ${info.classes[cls]}'s key`;
  $('attack-run').disabled = true;
  $('attack-rows').replaceChildren();
  say($('attack-message'), '', '');
  document.body.dataset.attack = 'running';
  state.attack = [];
  attackRow('Victims: the ciphertexts attacked', victimsCt, info, victims);
  attackRow('Their originals (the attacker never has these)', victimsPlain, info, victims);
  const bar = $('attack-progress');
  bar.max = ns.length;
  bar.value = 0;
  try {
    for (const n of ns) {
      $('attack-label').textContent = `fitting the rotation to ${n} known pair${n === 1 ? '' : 's'}…`;
      const known = pool.slice(0, n);
      const step = await state.call('knownPlaintext', {
        plain: gather(state.originals, known, len),
        cipher: gather(state.ciphertexts, known, len),
        victims: victimsCt,
        cls,
      });
      const s = score(step.decrypted, victimsPlain, len, info.bins);
      const point = { n, psnr: s.psnr, exact: s.exact, victims, rank: step.rank, dim: step.dim, decoder: step.decoder, captured_energy: step.captured_energy };
      state.attack.push(point);
      const psnr = s.exact === victims ? 'exact' : `${s.psnr.toFixed(1)} dB`;
      const row = attackRow(`n = ${n}: ${psnr}, ${s.exact} of ${victims} exact (rank ${step.rank} of ${step.dim}; decoder: ${step.decoder})`, step.decrypted, info, victims);
      row.dataset.n = String(n);
      bar.value += 1;
    }
    $('attack-label').textContent = '';
    const broken = state.attack.find((p) => p.exact === p.victims);
    if (broken) {
      say($('attack-message'), `With ${broken.n} known pairs (m = ${len}, the values in one image) every victim decrypted exactly: ${name} is broken, and so is every other ciphertext made with it. Fewer pairs already show the victims' shapes.`, 'warn');
    } else {
      const best = state.attack[state.attack.length - 1];
      say($('attack-message'), `This set holds ${idx.length} images for ${name}: at most ${pool.length} known pairs beside ${victims} victims, fewer than the m = ${len} that break a key completely (measured in docs/RESULTS.md). With ${best.n} pairs the victims came out at ${best.psnr.toFixed(1)} dB. Encrypt more images of one class (the sample's 1,797 digits do) to watch the key break.`, 'warn');
    }
    document.body.dataset.attack = 'done';
  } catch (err) {
    document.body.dataset.attack = 'failed';
    $('attack-label').textContent = '';
    say($('attack-message'), `The attack failed: ${err.message}`, 'error');
  }
  $('attack-run').disabled = false;
});

$('download').addEventListener('click', () => {
  const { name, bytes } = state.container;
  download(`${name}.safetensors`, new Blob([bytes], { type: 'application/octet-stream' }));
});

$('check').addEventListener('click', async () => {
  const file = $('check-file').files[0];
  if (!file) { say($('check-message'), 'Choose an encrypted dataset file first.', 'error'); return; }
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const { summary, pixels, labels } = await state.call('readContainer', { bytes }, { transfer: [bytes.buffer] });
    if (summary.key_fingerprint !== state.key.fingerprint) {
      throw new Error(`this file was made with key ${summary.key_fingerprint ?? '(none)'}, not the loaded key ${state.key.fingerprint}`);
    }
    const info = state.info;
    const len = imageLen(info.shape);
    const n = Math.min(24, summary.count);
    if (!summary.flow) throw new Error(`this file holds ${summary.scheme} images, not flow-rotation ciphertexts`);
    const agnostic = summary.flow.route === 'agnostic';
    const back = await state.call('decrypt', {
      pixels: pixels.slice(0, n * len), labels: agnostic ? undefined : labels.slice(0, n), size: len,
      madeWith: summary.flow,
    });
    showPairs($('decrypted'), pixels, back, labels, info, n);
    let note = `Decrypted the first ${n} of ${summary.count} images (top: ciphertext, bottom: decryption).`;
    if (state.ciphertexts && state.originals && state.ciphertexts.length >= n * len
        && pixels.subarray(0, n * len).every((v, i) => v === state.ciphertexts[i])) {
      const worst = back.reduce((m, v, i) => Math.max(m, Math.abs(v - state.originals[i])), 0);
      note += ` They match the originals encrypted above to within ${worst.toExponential(1)}.`;
      document.body.dataset.roundTrip = String(worst);
    }
    say($('check-message'), note, 'ok');
  } catch (err) { say($('check-message'), `Decryption failed: ${err.message}`, 'error'); }
});

start();
