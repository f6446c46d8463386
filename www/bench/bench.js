// Runs Veil's client benchmarks in a fresh worker and shows the results (and, for `cargo xtask
// bench`, leaves them as JSON in #bench-json).
import { $ } from '../lib/dom.js';
import { startWorker } from '../lib/rpc.js';

async function runBenchmarks(preferGpu) {
  const status = $('bench-status');
  // Its own worker (the production operations plus the timed ones), so the page's key is untouched.
  const call = startWorker((m) => { status.textContent = m; }, new URL('./worker.js', import.meta.url));
  const results = {};
  try {
    status.textContent = 'Starting the client…';
    const { backend } = await call('start', { preferGpu });
    results.backend = backend.kind;
    results.wasm_simd128 = (await call('buildInfo', {})).simd128;
    status.textContent = `Haar key generation (3072×3072) on the CPU…`;
    const haar = await call('benchHaar', { dim: 3072, derivation: 'householder' });
    results.haar_3072_ms = haar.ms;
    results.haar_3072_digest = haar.digest;
    status.textContent = `Demo-model inference on ${backend.kind}…`;
    const inf = await call('benchInference', { batch: 256, reps: 8 });
    results.inference_images_per_s = inf.images_per_s;
    status.textContent = `Flow-rotation encryption of digits on ${backend.kind}…`;
    const enc = await call('benchEncrypt', { batch: 256, reps: 8 });
    results.encrypt_digits_images_per_s = enc.images_per_s;
    status.textContent = `OWSD scrambling on ${backend.kind}…`;
    const sc = await call('benchScramble', { batch: 256, reps: 8, channels: 1, side: 8 });
    results.scramble_1x8x8_images_per_s = sc.images_per_s;
    const sc3 = await call('benchScramble', { batch: 256, reps: 4, channels: 3, side: 32 });
    results.scramble_3x32x32_images_per_s = sc3.images_per_s;
    status.textContent = `Adversarial data encryption (100 PGD steps) on ${backend.kind}…`;
    const adv = await call('benchAdversarial', { batch: 128, reps: 2 });
    results.adversarial_digits_images_per_s = adv.images_per_s;
    status.textContent = 'Done.';
    status.className = 'message ok';
  } catch (err) {
    status.textContent = `The benchmark failed: ${err.message}`;
    status.className = 'message error';
    results.error = err.message;
  } finally {
    call.terminate();
  }
  return results;
}

function show(results) {
  const rows = [
    ['Device', results.backend ?? '—'],
    ['3072×3072 Haar rotation from a key (Householder)', results.haar_3072_ms ? `${(results.haar_3072_ms / 1000).toFixed(2)} s` : '—'],
    ['Demo model inference', results.inference_images_per_s ? `${Math.round(results.inference_images_per_s)} images/s` : '—'],
    ['Flow-rotation encryption (digits, route a)', results.encrypt_digits_images_per_s ? `${Math.round(results.encrypt_digits_images_per_s)} images/s` : '—'],
    ['OWSD scrambling, 64-d → 1×8×8', results.scramble_1x8x8_images_per_s ? `${Math.round(results.scramble_1x8x8_images_per_s)} images/s` : '—'],
    ['OWSD scrambling, 64-d → 3×32×32', results.scramble_3x32x32_images_per_s ? `${Math.round(results.scramble_3x32x32_images_per_s)} images/s` : '—'],
    ['Adversarial encryption, digits, 100 PGD steps', results.adversarial_digits_images_per_s ? `${results.adversarial_digits_images_per_s.toFixed(1)} images/s` : '—'],
  ];
  const body = $('bench-table').tBodies[0];
  body.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement('tr');
    tr.innerHTML = `<td>${k}</td><td>${v}</td>`;
    return tr;
  }));
  $('bench-table').hidden = false;
  $('bench-json').textContent = JSON.stringify(results);
  $('bench-json').hidden = false;
}

$('bench-run').addEventListener('click', async () => {
  $('bench-run').disabled = true;
  $('bench-json').textContent = '';
  show(await runBenchmarks($('bench-backend').value === 'gpu'));
  $('bench-run').disabled = false;
});
