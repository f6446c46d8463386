// Flow families a page can load: the server's public ones and those fine-tuned in this browser.
import { apiJson } from '../lib/api.js';
import { listStoredFlows } from '../lib/store.js';

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

