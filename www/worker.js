// The Veil worker: owns the wasm client (device, model, key) off the main thread. Messages are
// {id, op, args}; answers are {id, ok, result} or {id, ok: false, error}.
import init, { Veil } from './pkg/veil_client.js';

let veil = null;
const ready = init();

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
  // Benchmarks (bench.html): wall-clock time in this worker.
  benchHaar({ dim }) {
    const t0 = performance.now();
    const digest = veil.haarDigest(dim, 0, true);
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
};

self.onmessage = async (event) => {
  const { id, op, args } = event.data;
  try {
    await ready;
    if (!ops[op]) throw new Error(`unknown operation ${op}`);
    if (op !== 'start' && !veil) throw new Error('the Veil client has not started');
    const result = await ops[op](args || {});
    self.postMessage({ id, ok: true, result });
  } catch (err) {
    self.postMessage({ id, ok: false, error: String((err && err.message) || err) });
  }
};
