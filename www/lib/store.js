// This browser's storage (IndexedDB database `veil`): keys, the last encrypted dataset, flows
// fine-tuned here, OWSD usage counts and the factory's owner token. Keys live here and in the
// worker's memory; no function here sends anything anywhere.

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

// OWSD key usage.
// {generation, usage: {used, budget, warn_at}, retired: [{generation, used}]} of a key; for a new
// key, generation 0 with `freshUsage` (the library's policy, from the worker's `owsdUsage`).
export async function owsdRecord(fingerprint, freshUsage) {
  const r = await tx('readonly', (s) => s.get(fingerprint), OWSD);
  return r || { generation: 0, usage: freshUsage, retired: [] };
}

export function storeOwsdRecord(fingerprint, record) {
  return tx('readwrite', (s) => s.put(record, fingerprint), OWSD);
}

// Flows fine-tuned in this browser.
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

// The factory's owner token, if this browser has one.
export function keptOwnerToken() {
  return tx('readonly', (s) => s.get('token'), OWNER);
}

export function keepOwnerToken(token) {
  return tx('readwrite', (s) => s.put(token, 'token'), OWNER);
}
