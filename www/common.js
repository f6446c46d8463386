// What every Veil page shares: the worker that runs the wasm client, the backend badge, messages,
// and the key store. Keys live in this browser's IndexedDB (database `veil`, store `keys`) and in
// the worker's memory; no function here sends one anywhere.

export const $ = (id) => document.getElementById(id);

export function say(el, text, kind) {
  el.textContent = text;
  el.className = `message ${kind || ''}`;
}

// --- the worker -----------------------------------------------------------------------------
export function startWorker(onFailure) {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  let nextId = 1;
  const pending = new Map();
  worker.onmessage = ({ data }) => {
    const p = pending.get(data.id);
    if (!p) return;
    if (data.progress) { p.onProgress?.(data.progress); return; }
    pending.delete(data.id);
    data.ok ? p.resolve(data.result) : p.reject(new Error(data.error));
  };
  worker.onerror = (e) => onFailure?.(`the worker failed to load: ${e.message || 'see the console'}`);
  // `transfer`: buffers handed to the worker instead of copied (the caller's arrays are emptied).
  return function call(op, args, { transfer = [], onProgress } = {}) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject, onProgress });
      worker.postMessage({ id, op, args }, transfer);
    });
  };
}

// Starts the client (WebGPU unless `?backend=cpu`), shows the backend in #backend, and loads the
// active key from the key store. Returns {call, backend, card, key}.
export async function startClient() {
  const badge = $('backend');
  const fail = (message) => {
    badge.textContent = `The Veil client could not start: ${message}`;
    badge.className = 'status failed';
  };
  const call = startWorker(fail);
  const preferGpu = new URLSearchParams(location.search).get('backend') !== 'cpu';
  try {
    const { backend, card } = await call('start', { preferGpu });
    if (backend.kind === 'webgpu') {
      badge.textContent = 'Running on WebGPU';
      badge.className = 'status webgpu';
    } else {
      badge.textContent = `Running on the CPU fallback (${backend.reason})`;
      badge.className = 'status cpu';
    }
    badge.dataset.backend = backend.kind;
    const key = await loadActiveKey(call);
    return { call, backend, card, key };
  } catch (err) {
    fail(err.message);
    throw err;
  }
}

// Shows a key ({fingerprint, name} or null) in `el`, its fingerprint in data-fingerprint.
export function showKey(el, key, none = 'no key loaded') {
  el.textContent = key ? `${key.fingerprint} (${key.name})` : none;
  el.dataset.fingerprint = key?.fingerprint || '';
}

// --- the key store (IndexedDB) --------------------------------------------------------------
const DB = 'veil';
const STORE = 'keys';
// Ciphertext datasets the encrypt page hands to the train page (never plaintext, never keys).
const OUTBOX = 'outbox';
// Flows fine-tuned on the owner's images (flows.html): they have seen private data, so they are
// kept here and never uploaded.
const FLOWS = 'flows';
// OWSD: per key, the scramble generation and how many images it has scrambled.
const OWSD = 'owsd';
// The factory's owner token (POST /api/owners): it says which datasets, jobs and models are this
// browser's. It is not a key and protects no image; it guards access to the factory only.
const OWNER = 'owner';

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 5);
    req.onupgradeneeded = () => {
      const names = req.result.objectStoreNames;
      if (!names.contains(STORE)) req.result.createObjectStore(STORE, { keyPath: 'fingerprint' });
      if (!names.contains(OUTBOX)) req.result.createObjectStore(OUTBOX);
      if (!names.contains(FLOWS)) req.result.createObjectStore(FLOWS, { keyPath: 'name' });
      if (!names.contains(OWSD)) req.result.createObjectStore(OWSD);
      if (!names.contains(OWNER)) req.result.createObjectStore(OWNER);
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new Error(`this browser's storage is not available: ${req.error}`));
  });
}

async function tx(mode, fn, store = STORE) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const t = db.transaction(store, mode);
    const result = fn(t.objectStore(store));
    t.oncomplete = () => { db.close(); resolve(result instanceof IDBRequest ? result.result : result); };
    t.onerror = () => { db.close(); reject(new Error(`this browser's storage failed: ${t.error}`)); };
  });
}

// Every stored key: {fingerprint, name, file (the plain key file), created, active}.
export async function listKeys() {
  const keys = await tx('readonly', (s) => s.getAll());
  const active = localStorage.getItem('veil.activeKey');
  return keys
    .map((k) => ({ ...k, active: k.fingerprint === active }))
    .sort((a, b) => a.created - b.created);
}

export async function storeKey(fingerprint, name, file) {
  await tx('readwrite', (s) => s.put({ fingerprint, name, file, created: Date.now() }));
  localStorage.setItem('veil.activeKey', fingerprint);
}

export async function deleteKey(fingerprint) {
  await tx('readwrite', (s) => s.delete(fingerprint));
  if (localStorage.getItem('veil.activeKey') === fingerprint) localStorage.removeItem('veil.activeKey');
}

export function setActiveKey(fingerprint) {
  localStorage.setItem('veil.activeKey', fingerprint);
}

// Loads the active stored key into the worker; returns {fingerprint, name} or null.
export async function loadActiveKey(call) {
  const active = localStorage.getItem('veil.activeKey');
  if (!active) return null;
  const keys = await listKeys();
  const k = keys.find((x) => x.fingerprint === active);
  if (!k) return null;
  await call('importKey', { text: k.file });
  return { fingerprint: k.fingerprint, name: k.name };
}

// Saves the worker's current key (plain key file) in the store and makes it active.
export async function keepWorkerKey(call) {
  const { fingerprint, name } = await call('status');
  if (!fingerprint) return null;
  const file = await call('exportKey', {});
  await storeKey(fingerprint, name, file);
  return { fingerprint, name };
}

// The last encrypted dataset: {name, bytes (a container), summary, created}.
export function keepContainer(entry) {
  return tx('readwrite', (s) => s.put({ ...entry, created: Date.now() }, 'last'), OUTBOX);
}

export function lastContainer() {
  return tx('readonly', (s) => s.get('last'), OUTBOX);
}

// --- OWSD key usage ---------------------------------------------------------------------------
// {generation, usage: {used, budget, warn_at}, retired: [{generation, used}]} of a key; for a new
// key, generation 0 with `freshUsage` (the library's policy, from the worker's `owsdUsage`).
export async function owsdRecord(fingerprint, freshUsage) {
  const r = await tx('readonly', (s) => s.get(fingerprint), OWSD);
  return r || { generation: 0, usage: freshUsage, retired: [] };
}

export function storeOwsdRecord(fingerprint, record) {
  return tx('readwrite', (s) => s.put(record, fingerprint), OWSD);
}

// --- flow families: the server's public ones and those fine-tuned in this browser ----------
// Fine-tuned flows: {name, base, data, shape, classes, agnostic, manifest, names, files, reports, created}.
export function listStoredFlows() {
  return tx('readonly', (s) => s.getAll(), FLOWS);
}

export function storeFlows(entry) {
  return tx('readwrite', (s) => s.put({ ...entry, created: Date.now() }), FLOWS);
}

export function deleteStoredFlows(name) {
  return tx('readwrite', (s) => s.delete(name), FLOWS);
}

// Every family a page can load: the server's, then the fine-tuned ones of this browser, as
// {id, name, shape, classes, data, stored}. `id` is what loadFamily takes.
export async function flowFamilies() {
  const served = (await apiJson('/api/flows')).map((f) => ({ ...f, id: f.name, stored: false }));
  let stored = [];
  try { stored = await listStoredFlows(); } catch { /* no storage: served flows only */ }
  return [
    ...served,
    ...stored.map((f) => ({ id: `stored:${f.name}`, name: f.name, shape: f.shape, classes: f.classes, data: f.data, stored: true })),
  ];
}

// Loads a family (an id from flowFamilies) into the worker; returns the flows' info.
export async function loadFamily(call, id, onProgress) {
  if (!id.startsWith('stored:')) return call('loadFlows', { family: id }, { onProgress });
  const name = id.slice('stored:'.length);
  const entry = (await listStoredFlows()).find((f) => f.name === name);
  if (!entry) throw new Error(`no fine-tuned flows called ${name} are kept in this browser`);
  return call('loadStoredFlows', { family: entry.name, manifest: entry.manifest, names: entry.names, files: entry.files });
}

// The family last chosen on the encrypt or fine-tune page (classify prefers it).
export const activeFamily = () => localStorage.getItem('veil.activeFlows');
export const setActiveFamily = (id) => localStorage.setItem('veil.activeFlows', id);

export function familyLabel(f) {
  const s = f.shape;
  return `${f.name}: ${s.channels}×${s.height}×${s.width}, ${f.classes.length} classes (${f.stored ? 'fine-tuned in this browser' : f.data})`;
}

// --- choosing images ------------------------------------------------------------------------
// The class of a file in a folder of class sub-folders: its parent folder's name (null for a
// loose file).
export function classOf(path) {
  const parts = path.split('/').filter(Boolean);
  return parts.length >= 2 ? parts[parts.length - 2] : null;
}

const pathOf = (e) => e.file.webkitRelativePath || e.file.name;

// The image files among `entries` ({file, className}), in path order, so that a folder always
// gives the same dataset whatever order the browser lists it in.
export function imageEntries(entries) {
  return entries
    .filter((e) => /\.(png|jpe?g|gif|bmp|webp)$/i.test(e.file.name))
    .sort((a, b) => (pathOf(a) < pathOf(b) ? -1 : pathOf(a) > pathOf(b) ? 1 : 0));
}

// Entries of a folder input (class from the sub-folder) or a plain files input (no class).
export function inputEntries(input) {
  return [...input.files].map((file) => ({
    file,
    className: input.webkitdirectory ? classOf(file.webkitRelativePath || file.name) : null,
  }));
}

// The class index of each entry: its folder's class, or `fallback` for loose files. Throws,
// naming them, when folders are not classes of `classes`.
export function labelsFor(entries, classes, fallback) {
  const unknown = new Set();
  const labels = Uint32Array.from(entries, (e) => {
    if (e.className === null) return fallback;
    const k = classes.indexOf(e.className);
    if (k < 0) unknown.add(e.className);
    return k;
  });
  if (unknown.size) {
    throw new Error(`the folders ${[...unknown].map((c) => `"${c}"`).join(', ')} are not classes of these flows (${classes.join(', ')})`);
  }
  return labels;
}

// Decodes the entries' files in the worker (the native decoder, resized to `shape` and quantised
// to `levels`, by default the loaded flows' levels), 256 at a time; one Float32Array of
// [N, C, H, W] pixels.
export async function decodeEntries(call, entries, shape, onProgress, levels) {
  const len = shape.channels * shape.height * shape.width;
  const out = new Float32Array(entries.length * len);
  for (let s = 0; s < entries.length; s += 256) {
    const part = entries.slice(s, s + 256);
    const buffers = await Promise.all(part.map(async (e) => new Uint8Array(await e.file.arrayBuffer())));
    const names = part.map((e) => e.file.webkitRelativePath || e.file.name);
    const pixels = levels
      ? await call('decodeImagesAs', { names, buffers, shape, levels }, { transfer: buffers.map((b) => b.buffer) })
      : await call('decodeImages', { names, buffers }, { transfer: buffers.map((b) => b.buffer) });
    out.set(pixels, s * len);
    onProgress({ done: Math.min(entries.length, s + 256), total: entries.length, what: 'reading images' });
  }
  return out;
}

async function walk(entry, path, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, className: classOf(`${path}/${file.name}`) });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const child of batch) await walk(child, `${path}/${entry.name}`, out);
    }
  }
}

// Makes `zone` accept dropped folders (walked; classes from sub-folders) and files (no class);
// calls `onEntries(entries)` or `onError(message)`.
export function bindDrop(zone, onEntries, onError) {
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', async (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const items = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
    const out = [];
    try {
      for (const entry of items) await walk(entry, '', out);
      const folders = items.some((i) => i.isDirectory);
      onEntries(folders ? out : out.map((x) => ({ ...x, className: null })));
    } catch (err) { onError(`the dropped items could not be read: ${err.message}`); }
  });
}

// --- small helpers --------------------------------------------------------------------------
// Draws `pixels` (one C·H·W image in [0, 1]; values outside are clamped) into `canvas`.
export function drawImage(canvas, pixels, shape) {
  const { channels: c, height: h, width: w } = shape;
  const img = new ImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const at = (ch) => Math.round(Math.min(1, Math.max(0, pixels[ch * h * w + i])) * 255);
    const [r, g, b] = c === 3 ? [at(0), at(1), at(2)] : [at(0), at(0), at(0)];
    img.data.set([r, g, b, 255], i * 4);
  }
  const off = new OffscreenCanvas(w, h);
  off.getContext('2d').putImageData(img, 0, 0);
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
}

export function progressTo(bar, label) {
  return ({ done, total, what }) => {
    bar.max = total;
    bar.value = done;
    if (label) label.textContent = `${what}: ${done} / ${total}`;
  };
}

let ownerTokenPromise = null;

// This browser's owner token: the kept one, or a new one from the factory (`fresh`: replace a
// token the factory no longer knows). One request at a time, so two pages' first calls do not
// make two owners.
function ownerToken(fresh = false) {
  const previous = ownerTokenPromise;
  ownerTokenPromise = (async () => {
    if (!fresh) {
      const kept = (await previous?.catch(() => null)) ?? await tx('readonly', (s) => s.get('token'), OWNER);
      if (kept) return kept;
    }
    const r = await fetch('/api/owners', { method: 'POST' });
    const body = await r.json().catch(() => ({}));
    if (!r.ok || !body.token) throw new Error(body.error || `the factory gave no owner token (${r.status})`);
    await tx('readwrite', (s) => s.put(body.token, 'token'), OWNER);
    return body.token;
  })();
  return ownerTokenPromise;
}

// fetch() with the owner token. A token the factory does not know (its data was reset) is
// replaced once; what the old one owned is gone with it.
export async function ownerFetch(url, options = {}) {
  const send = (token) => fetch(url, { ...options, headers: { ...(options.headers || {}), authorization: `Bearer ${token}` } });
  const r = await send(await ownerToken());
  return r.status === 401 ? send(await ownerToken(true)) : r;
}

// A Server-Sent Events stream read with the owner token (EventSource cannot send a header):
// calls `on(name, data)` per event until the stream ends, then `onEnd(error)`. Returns a
// function that stops reading.
export function ownerEvents(url, on, onEnd) {
  const abort = new AbortController();
  (async () => {
    const r = await ownerFetch(url, { signal: abort.signal, headers: { accept: 'text/event-stream' } });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `the server answered ${r.status}`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length) on(name, JSON.parse(data.join('\n')));
      }
    }
  })().then(() => onEnd?.(null), (e) => { if (!abort.signal.aborted) onEnd?.(e); });
  return () => abort.abort();
}

// The factory's routes, where what a caller sees depends on its owner token, and the labs'
// starts, which count against the owner's attack quota; the rest (flows, health) is public and
// goes without one.
const OWNED = /^\/api\/(datasets|jobs|models|me|leakage\/attacks|rtas\/runs)(\/|\?|$)/;

// What a failed response says, with when to retry if it is past a quota (429 Retry-After).
export function failure(r, body) {
  const text = body?.error || `The server answered ${r.status}.`;
  const retry = r.status === 429 ? r.headers.get('retry-after') : null;
  return retry && !/retry in/.test(text) ? `${text} (try again in ${retry} s)` : text;
}

// Starts a lab run: POSTs `body` as JSON with the owner token (each visitor's attacks count
// against its own quota). Resolves to the run, or rejects with what to tell the user.
export async function startRun(url, body) {
  let resp;
  try {
    resp = await ownerFetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`The server cannot be reached: ${e.message}`);
  }
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(failure(resp, answer));
  return answer;
}

// An EventSource of a lab run that breaks while the run is still going (the server stopped)
// ends it as failed, with a message.
export function failOnBrokenStream(source, say, setState) {
  source.onerror = () => {
    if (document.body.dataset.state === 'running') {
      say('The event stream was interrupted (the server may have stopped).', 'error');
      source.close();
      setState('failed');
    }
  };
}

export async function apiJson(url, options) {
  const r = await (OWNED.test(url) ? ownerFetch : fetch)(url, options);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) throw new Error(failure(r, body));
  return body;
}

export function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
