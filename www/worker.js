// The Veil worker: owns the wasm client (device, model, key, flows) off the main thread.
// Messages are {id, op, args}; answers are {id, ok, result} or {id, ok: false, error}, and long
// operations also post {id, progress: {done, total, what}}. Typed arrays in answers are
// transferred, not copied.
import init, { Veil, modelRouted, owsdUsage, sampleDigits, uciDigit } from './pkg/veil_client.js';

let veil = null;
let cancelFineTune = false;
let cancelAdversarial = false;
const ready = init();
// Images per wasm call in long loops: each call is one progress step.
const CHUNK = 256;

function transferables(value, out = []) {
  if (ArrayBuffer.isView(value)) out.push(value.buffer);
  else if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const v of Object.values(value)) transferables(v, out);
  }
  return out;
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`the server answered ${r.status} for ${url}`);
  return new Uint8Array(await r.arrayBuffer());
}

// Runs `step(pixelsChunk, labelsChunk)` over a batch in chunks of CHUNK images, reporting progress.
async function chunked(pixels, labels, size, what, progress, step) {
  const n = pixels.length / size;
  if (!Number.isInteger(n) || n === 0) throw new Error(`expected whole images of ${size} values, got ${pixels.length} values`);
  const out = new Float32Array(pixels.length);
  for (let s = 0; s < n; s += CHUNK) {
    const e = Math.min(n, s + CHUNK);
    const part = await step(pixels.subarray(s * size, e * size), labels ? labels.subarray(s, e) : undefined);
    out.set(part, s * size);
    progress({ done: e, total: n, what });
  }
  return out;
}

const ops = {
  async start({ preferGpu }) {
    veil = await Veil.create(preferGpu);
    return { backend: veil.backend(), card: veil.modelCard() };
  },
  generateKey: ({ name }) => veil.generateKey(name),
  exportKey: ({ passphrase }) => veil.exportKey(passphrase || undefined),
  importKey: ({ text, passphrase }) => veil.importKey(text, passphrase || undefined),
  forgetKey: () => veil.forgetKey(),
  status: () => ({ fingerprint: veil.fingerprint() ?? null, name: veil.keyName() }),
  classify: ({ pixels }) => veil.classify(pixels),
  // A drawn or dropped image (RGBA bytes) made into an 8×8 digit as the UCI digits were.
  uciDigit: ({ rgba, width, height }) => uciDigit(rgba, width, height),

  // Flow rotation. The flows are public files of the server; only the key makes them secret.
  async loadFlows({ family }, progress) {
    const families = await (await fetch('/api/flows')).json();
    const fam = families.find((f) => f.name === family);
    if (!fam) throw new Error(`the server has no flows called ${family}`);
    const manifest = await (await fetch(fam.manifest_url)).text();
    const names = [], files = [];
    for (const [i, f] of fam.flows.entries()) {
      names.push(f.url.split('/').pop());
      files.push(await fetchBytes(f.url));
      progress({ done: i + 1, total: fam.flows.length, what: 'downloading the flows' });
    }
    return veil.loadFlows(family, manifest, names, files);
  },
  // Flows kept in this browser (fine-tuned on the owner's images): the page reads them from
  // IndexedDB and hands them over; they never come from or go to the server.
  loadStoredFlows: ({ family, manifest, names, files }) => veil.loadFlows(family, manifest, names, files),
  flowsInfo: () => veil.flowsInfo(),

  // Fine-tuning the loaded flows: plan, then run a few steps per wasm call, reporting progress
  // and yielding to the event loop between calls so that fineTuneCancel gets through.
  fineTuneBegin: ({ pixels, labels, options }) => veil.fineTuneBegin(pixels, labels, JSON.stringify(options)),
  async fineTune(_args, progress) {
    cancelFineTune = false;
    let perCall = 1;
    for (;;) {
      const t0 = performance.now();
      const p = await veil.fineTuneRun(perCall);
      // Aim for about 4 progress reports a second whatever the backend's speed.
      perCall = Math.max(1, Math.min(50, Math.round(perCall * 250 / Math.max(1, performance.now() - t0))));
      progress({ done: p.done_steps, total: p.total_steps, what: 'fine-tuning', detail: p });
      if (p.finished) return p;
      await new Promise((r) => setTimeout(r, 0));
      if (cancelFineTune) {
        veil.fineTuneCancel();
        throw new Error('fine-tuning cancelled; the flows are as they were');
      }
    }
  },
  fineTuneCancel() { cancelFineTune = true; },
  fineTuneApply: ({ family }) => veil.fineTuneApply(family),
  exportFlows: () => veil.exportFlows(),
  decodeImages: ({ names, buffers }) => veil.decodeImages(names, buffers),
  decodeImagesAs: ({ names, buffers, shape, levels }) => veil.decodeImagesAs(names, buffers, shape.channels, shape.height, shape.width, levels),
  iinTrain: ({ embeddings, cloud, labels, classes, options }) => veil.iinTrain(embeddings, cloud, labels, classes, JSON.stringify(options || {})),
  iinPredict: ({ embeddings, cloud }) => veil.iinPredict(embeddings, cloud),
  async encrypt({ pixels, labels, size }, progress) {
    return chunked(pixels, labels, size, 'encrypting', progress, (p, l) => veil.encrypt(p, l));
  },
  // Route (a) or (b) for a dataset: images the flows cannot encrypt are left out and named, the
  // rest encrypted. Answers {ciphertexts, kept (batch indices), failures: [{index, reason}]}.
  async encryptChecked({ pixels, labels, size }, progress) {
    const n = pixels.length / size;
    if (!Number.isInteger(n) || n === 0) throw new Error(`expected whole images of ${size} values, got ${pixels.length} values`);
    const parts = [], kept = [], failures = [];
    for (let s = 0; s < n; s += CHUNK) {
      const e = Math.min(n, s + CHUNK);
      const r = await veil.encryptChecked(pixels.subarray(s * size, e * size), labels ? labels.subarray(s, e) : undefined);
      parts.push(r.ciphertexts);
      for (const i of r.kept) kept.push(s + i);
      for (const f of r.failures) failures.push({ index: s + f.index, reason: f.reason });
      progress({ done: e, total: n, what: 'encrypting' });
    }
    const ciphertexts = new Float32Array(kept.length * size);
    let at = 0;
    for (const p of parts) { ciphertexts.set(p, at); at += p.length; }
    return { ciphertexts, kept: Uint32Array.from(kept), failures };
  },
  async encryptAs({ pixels, size, cls }, progress) {
    return chunked(pixels, null, size, `encrypting as class ${cls}`, progress, (p) => veil.encryptAs(p, cls));
  },
  async decrypt({ pixels, labels, size, madeWith }, progress) {
    const settings = madeWith ? JSON.stringify(madeWith) : undefined;
    return chunked(pixels, labels, size, 'decrypting', progress, (p, l) => veil.decrypt(p, l, settings));
  },
  // Known-plaintext key recovery, the attacker's side, against ciphertexts this page made: the
  // public flows, n pairs and the victims' ciphertexts go in; the key is not used.
  knownPlaintext: ({ plain, cipher, victims, cls }) => veil.knownPlaintext(plain, cipher, victims, cls ?? undefined),
  flowContainer: ({ ciphertexts, labels, agnostic }) => veil.flowContainer(ciphertexts, labels, agnostic),
  imagesBatch: ({ values }) => veil.imagesBatch(values),
  readContainer: ({ bytes }) => veil.readContainer(bytes),
  modelRouted: ({ probs, n }) => modelRouted(probs, n),
  sampleDigits: ({ n }) => sampleDigits(n),

  // OWSD: embeddings (the demo CNN's penultimate layer) scrambled by the key's generator. The
  // usage count comes from and goes back to the page, which keeps it in IndexedDB.
  embed: ({ pixels, encoders }) => veil.embed(pixels, Uint32Array.from(encoders || [0])),
  importEncoder: ({ name, bytes }) => veil.importEncoder(name, new Uint8Array(bytes)),
  // OWSD's budget policy (the library's): a fresh usage count for `budget` images (default 9,000).
  owsdUsage: ({ budget }) => owsdUsage(budget ?? undefined),
  scrambleBegin: ({ setup, usage }) => veil.scrambleBegin(JSON.stringify(setup), JSON.stringify(usage)),
  scrambleStatus: () => veil.scrambleStatus() ?? null,
  scramble: ({ embeddings, force }) => veil.scramble(embeddings, !!force),

  // Adversarial data encryption: the key's secret correspondence and the owner's base model (or
  // the demo model for digits) stay here; only encrypted images go back to the page.
  adversarialBegin: ({ setup, base }) =>
    veil.adversarialBegin(JSON.stringify(setup), base ? new Uint8Array(base) : undefined),
  // Encrypts `size` images per wasm call, reporting progress after each; adversarialCancel
  // stops it between calls (the images already encrypted are dropped with the run).
  async adversarialEncrypt({ pixels, labels, size }, progress) {
    cancelAdversarial = false;
    const n = labels.length;
    const per = pixels.length / Math.max(n, 1);
    if (!Number.isInteger(per) || n === 0) throw new Error(`expected whole images for ${n} labels, got ${pixels.length} values`);
    const out = new Float32Array(pixels.length);
    const psnr = [];
    const ssim = [];
    for (let s = 0; s < n; s += size) {
      const e = Math.min(n, s + size);
      const r = await veil.adversarialEncrypt(pixels.subarray(s * per, e * per), labels.subarray(s, e));
      out.set(r.pixels, s * per);
      psnr.push(...r.psnr);
      ssim.push(...r.ssim);
      progress({ done: e, total: n, what: 'encrypting' });
      await new Promise((r) => setTimeout(r, 0));
      if (cancelAdversarial) throw new Error(`encryption cancelled after ${e} of ${n} images; nothing was kept`);
    }
    return { pixels: out, psnr, ssim };
  },
  adversarialCancel() { cancelAdversarial = true; },
  adversarialContainer: ({ encrypted, labels }) => veil.adversarialContainer(encrypted, labels),
  // The owner's base model, trained here on their labelled images (never sent).
  adversarialTrainBegin: ({ pixels, labels, shape, classes, options }) =>
    veil.adversarialTrainBegin(pixels, labels, shape.channels, shape.height, shape.width, classes, JSON.stringify(options || {})),
  async adversarialTrain(_args, progress) {
    cancelAdversarial = false;
    let perCall = 1;
    for (;;) {
      const t0 = performance.now();
      const p = await veil.adversarialTrainRun(perCall);
      perCall = Math.max(1, Math.min(50, Math.round(perCall * 250 / Math.max(1, performance.now() - t0))));
      progress({ done: p.done_steps, total: p.total_steps, what: `training the base model (epoch ${p.epoch} of ${p.epochs})`, detail: p });
      if (p.finished) return p;
      await new Promise((r) => setTimeout(r, 0));
      if (cancelAdversarial) {
        veil.adversarialTrainCancel();
        throw new Error('training cancelled; no base model was kept');
      }
    }
  },
  adversarialBaseModel: () => veil.adversarialBaseModel(),

  // Benchmarks (bench.html): wall-clock time in this worker.
  buildInfo: () => veil.buildInfo(),
  benchHaar({ dim, derivation }) {
    const t0 = performance.now();
    const digest = veil.haarDigest(dim, 0, true, derivation);
    return { ms: performance.now() - t0, digest };
  },
  async benchInference({ batch, reps }) {
    const card = veil.modelCard();
    const size = card.config.channels * card.config.height * card.config.width;
    const pixels = new Float32Array(batch * size);
    for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 7919 % 101) / 100;
    await veil.logits(pixels); // warm-up: shader compilation, allocation
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) await veil.logits(pixels);
    const ms = performance.now() - t0;
    return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
  },
  // Flow-rotation encryption throughput (digits) with a throw-away key (the page's own key is untouched:
  // the bench runs in its own worker).
  async benchEncrypt({ batch, reps }, progress) {
    if (!veil.fingerprint()) veil.generateKey('bench');
    if (!veil.flowsInfo()) await ops.loadFlows({ family: 'digits' }, progress);
    // The first digits of the UCI set with their true classes (a flow's inverse may overflow on
    // inputs far from its class, so noise would not measure the real work).
    const { pixels, labels } = sampleDigits(batch);
    await veil.encrypt(pixels, labels); // warm-up
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) await veil.encrypt(pixels, labels);
    const ms = performance.now() - t0;
    return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
  },
};

// OWSD scramble throughput: 64-d embeddings (fixed pseudo-random values) to `side`×`side`×`channels`
// images with a throw-away key's generator and an unlimited budget.
ops.benchScramble = async ({ batch, reps, channels, side }) => {
  if (!veil.fingerprint()) veil.generateKey('bench');
  veil.scrambleBegin(
    JSON.stringify({ encoders: [64], output: { channels, height: side, width: side }, generation: 0 }),
    JSON.stringify({ used: 0, budget: Number.MAX_SAFE_INTEGER, warn_at: Number.MAX_SAFE_INTEGER }),
  );
  const emb = new Float32Array(batch * 64);
  for (let i = 0; i < emb.length; i++) emb[i] = ((i * 7919) % 101) / 50 - 1;
  await veil.scramble(emb, true); // warm-up
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) await veil.scramble(emb, true);
  const ms = performance.now() - t0;
  return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
};

// Adversarial encryption throughput on digits, as veil-bench's native figure: the first `batch`
// digits, the demo model as base, ε 1.5, 100 PGD steps, one warm-up batch.
ops.benchAdversarial = async ({ batch, reps }) => {
  if (!veil.fingerprint()) veil.generateKey('bench');
  veil.adversarialBegin(JSON.stringify({
    shape: { channels: 1, height: 8, width: 8 },
    classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
    epsilon: 1.5,
    iterations: 100,
    method: null,
  }));
  const { pixels, labels } = sampleDigits(batch);
  await veil.adversarialEncrypt(pixels, labels); // warm-up
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) await veil.adversarialEncrypt(pixels, labels);
  const ms = performance.now() - t0;
  return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
};

self.onmessage = async (event) => {
  const { id, op, args } = event.data;
  const progress = (p) => self.postMessage({ id, progress: p });
  try {
    await ready;
    if (!ops[op]) throw new Error(`unknown operation ${op}`);
    if (op !== 'start' && !veil) throw new Error('the Veil client has not started');
    const result = await ops[op](args || {}, progress);
    self.postMessage({ id, ok: true, result }, transferables(result));
  } catch (err) {
    self.postMessage({ id, ok: false, error: String((err && err.message) || err) });
  }
};
