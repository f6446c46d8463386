// Flow rotation's operations. The flows are public files of the server; only the key makes them
// secret.
import { modelRouted } from '../pkg/veil_client.js';
import { chunked, CHUNK, fetchBytes, stepped, veil } from './serve.js';

let cancelFineTune = false;

export const flowRotationOps = {
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
  fineTuneBegin: ({ pixels, labels, options }) => veil.fineTuneBegin(pixels, labels, options),
  fineTune(_args, progress) {
    cancelFineTune = false;
    return stepped((n) => veil.fineTuneRun(n), () => 'fine-tuning', progress, {
      cancelled: () => cancelFineTune,
      cancel: () => veil.fineTuneCancel(),
      message: 'fine-tuning cancelled; the flows are as they were',
    });
  },
  fineTuneCancel() { cancelFineTune = true; },
  fineTuneApply: ({ family }) => veil.fineTuneApply(family),
  exportFlows: () => veil.exportFlows(),
  decodeImages: ({ names, buffers }) => veil.decodeImages(names, buffers),
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
    return chunked(pixels, labels, size, 'decrypting', progress, (p, l) => veil.decrypt(p, l, madeWith ?? undefined));
  },
  // Known-plaintext key recovery, the attacker's side, against ciphertexts this page made: the
  // public flows, n pairs and the victims' ciphertexts go in; the key is not used.
  knownPlaintext: ({ plain, cipher, victims, cls }) => veil.knownPlaintext(plain, cipher, victims, cls ?? undefined),
  flowContainer: ({ ciphertexts, labels, agnostic }) => veil.flowContainer(ciphertexts, labels, agnostic),
  imagesBatch: ({ values }) => veil.imagesBatch(values),
  modelRouted: ({ probs, n }) => modelRouted(probs, n),
};
