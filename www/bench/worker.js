// The benchmark page's worker: the production operations plus timed ones (wall-clock time in
// this worker, with a throw-away key, so the page's own key is untouched). Kept out of the
// production worker, which has no benchmark code.
import { sampleDigits } from '../pkg/veil_client.js';
import { adversarialOps } from '../worker/adversarial.js';
import { coreOps } from '../worker/core.js';
import { flowRotationOps } from '../worker/flow-rotation.js';
import { owsdOps } from '../worker/owsd.js';
import { serve, veil } from '../worker/serve.js';

const benchOps = {
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
    if (!veil.flowsInfo()) await flowRotationOps.loadFlows({ family: 'digits' }, progress);
    // The first digits of the UCI set with their true classes (a flow's inverse may overflow on
    // inputs far from its class, so noise would not measure the real work).
    const { pixels, labels } = sampleDigits(batch);
    await veil.encrypt(pixels, labels); // warm-up
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) await veil.encrypt(pixels, labels);
    const ms = performance.now() - t0;
    return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
  },
  // OWSD scramble throughput: 64-d embeddings (fixed pseudo-random values) to `side`×`side`×`channels`
  // images with a throw-away key's generator and an unlimited budget.
  async benchScramble({ batch, reps, channels, side }) {
    if (!veil.fingerprint()) veil.generateKey('bench');
    veil.scrambleBegin(
      { encoders: [64], output: { channels, height: side, width: side }, generation: 0 },
      { used: 0, budget: Number.MAX_SAFE_INTEGER, warn_at: Number.MAX_SAFE_INTEGER },
    );
    const emb = new Float32Array(batch * 64);
    for (let i = 0; i < emb.length; i++) emb[i] = ((i * 7919) % 101) / 50 - 1;
    await veil.scramble(emb, true); // warm-up
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) await veil.scramble(emb, true);
    const ms = performance.now() - t0;
    return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
  },
  // Adversarial encryption throughput on digits, as veil-bench's native figure: the first `batch`
  // digits, the demo model as base, ε 1.5, 100 PGD steps, one warm-up batch.
  async benchAdversarial({ batch, reps }) {
    if (!veil.fingerprint()) veil.generateKey('bench');
    veil.adversarialBegin({
      shape: { channels: 1, height: 8, width: 8 },
      classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
      epsilon: 1.5,
      iterations: 100,
      method: null,
    });
    const { pixels, labels } = sampleDigits(batch);
    await veil.adversarialEncrypt(pixels, labels); // warm-up
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) await veil.adversarialEncrypt(pixels, labels);
    const ms = performance.now() - t0;
    return { images_per_s: (batch * reps) / (ms / 1000), ms, batch, reps };
  },
};

serve({ ...coreOps, ...flowRotationOps, ...owsdOps, ...adversarialOps, ...benchOps });
