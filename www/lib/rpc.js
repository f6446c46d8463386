// The page's side of the worker that runs the wasm client: numbered requests, progress events,
// and starting the client with the backend badge and the active key.
import { $, showKey } from './dom.js';
import { loadActiveKey } from './store.js';

// Starts a worker (the production one unless `url` names another, as the bench page does) and
// returns `call(op, args, {transfer, onProgress})`, a promise of the operation's answer, with
// `call.terminate()` to stop the worker.
export function startWorker(onFailure, url = new URL('../worker.js', import.meta.url)) {
  const worker = new Worker(url, { type: 'module' });
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
  function call(op, args, { transfer = [], onProgress } = {}) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject, onProgress });
      worker.postMessage({ id, op, args }, transfer);
    });
  }
  // Stops the worker (the bench page's, when its run is over).
  call.terminate = () => worker.terminate();
  return call;
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

// Starts the client for a page that works with the owner's key: sets `state.call` and
// `state.key`, and shows the key in #key (`none`: what to say when there is none). Resolves to
// the client, or null when it could not start (the backend badge says why).
export async function startKeyedPage(state, none) {
  let client;
  try { client = await startClient(); } catch { return null; }
  state.call = client.call;
  state.key = client.key;
  showKey($('key'), client.key, none);
  return client;
}
