// The worker's plumbing: the wasm client's session (a live binding the operation modules read),
// the message loop, and helpers for long operations. Messages are {id, op, args}; answers are
// {id, ok, result} or {id, ok: false, error}, and long operations also post {id, progress:
// {done, total, what}}. Typed arrays in answers are transferred, not copied.
import init, { Veil } from '../pkg/veil_client.js';

// The session, once `start` has run (an ES module export is a live binding: importers see it
// change).
export let veil = null;
const ready = init();
// Images per wasm call in long loops: each call is one progress step.
export const CHUNK = 256;

function transferables(value, out = []) {
  if (ArrayBuffer.isView(value)) out.push(value.buffer);
  else if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const v of Object.values(value)) transferables(v, out);
  }
  return out;
}

export async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`the server answered ${r.status} for ${url}`);
  return new Uint8Array(await r.arrayBuffer());
}

// Runs `step(pixelsChunk, labelsChunk)` over a batch in chunks of CHUNK images, reporting progress.
export async function chunked(pixels, labels, size, what, progress, step) {
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

// Drives a run the wasm client advances a few steps per call (`step(n)` resolves to its progress,
// `{done_steps, total_steps, finished}`), sizing the calls for about 4 progress reports a second
// whatever the backend's speed and yielding between them so that a cancel gets through:
// `cancelled()` is checked after each call, and then `cancel()` runs and `message` is thrown.
export async function stepped(step, what, progress, { cancelled, cancel, message }) {
  let perCall = 1;
  for (;;) {
    const t0 = performance.now();
    const p = await step(perCall);
    perCall = Math.max(1, Math.min(50, Math.round(perCall * 250 / Math.max(1, performance.now() - t0))));
    progress({ done: p.done_steps, total: p.total_steps, what: what(p), detail: p });
    if (p.finished) return p;
    await new Promise((r) => setTimeout(r, 0));
    if (cancelled()) {
      cancel();
      throw new Error(message);
    }
  }
}

// The operation every worker has: starting the session.
async function start({ preferGpu }) {
  veil = await Veil.create(preferGpu);
  return { backend: veil.backend(), card: veil.modelCard() };
}

// Answers the page's messages with `ops` (name → function(args, progress)).
export function serve(ops) {
  const all = { ...ops, start };
  self.onmessage = async (event) => {
    const { id, op, args } = event.data;
    const progress = (p) => self.postMessage({ id, progress: p });
    try {
      await ready;
      if (!all[op]) throw new Error(`unknown operation ${op}`);
      if (op !== 'start' && !veil) throw new Error('the Veil client has not started');
      const result = await all[op](args || {}, progress);
      self.postMessage({ id, ok: true, result }, transferables(result));
    } catch (err) {
      self.postMessage({ id, ok: false, error: String((err && err.message) || err) });
    }
  };
}
