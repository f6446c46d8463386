// Veil's first page: backend status, the key (lib/keys-ui.js) and local digit classification.
// All work happens in the worker (worker.js); this file only handles the page.
import { $, say } from '../lib/dom.js';
import { bindKeys } from '../lib/keys-ui.js';
import { startClient } from '../lib/rpc.js';

let call = null;
let classes = [];

async function start() {
  let client;
  try { client = await startClient(); } catch { return; }
  call = client.call;
  const { backend, card } = client;
  $('model-backend').textContent = backend.kind === 'webgpu' ? 'your GPU (WebGPU)' : 'your CPU (WebAssembly)';
  classes = card.classes;
  $('model-accuracy').textContent = `${(100 * card.test_accuracy).toFixed(1)} %`;
  const hw = card.handwriting;
  $('model-handwriting').textContent = hw
    ? `${(100 * hw.accuracy).toFixed(1)} % of ${10 * hw.per_class} digits drawn by a script at other sizes, margins and stroke widths (7s without a crossbar, which the UCI writers never used: ${(100 * hw.per_class_accuracy[7]).toFixed(0)} %)`
    : 'not measured';
  $('classify-drawing').disabled = false;
  await bindKeys(call, client.key);
}

// --- drawing and classification -------------------------------------------------------------
const pad = $('pad');
const ctx = pad.getContext('2d', { willReadFrequently: true });
function clearPad() {
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, pad.width, pad.height);
}
clearPad();
let drawing = false;
function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
}
pad.addEventListener('pointerdown', (e) => {
  drawing = true;
  try { pad.setPointerCapture(e.pointerId); } catch { /* synthetic or already-released pointer */ }
  ctx.strokeStyle = '#fff';
  ctx.lineWidth = 18;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.beginPath();
  ctx.moveTo(...point(e));
});
pad.addEventListener('pointermove', (e) => {
  if (!drawing) return;
  ctx.lineTo(...point(e));
  ctx.stroke();
});
pad.addEventListener('pointerup', () => { drawing = false; });
$('clear').addEventListener('click', () => { clearPad(); $('prediction').textContent = '—'; });

// The UCI digits were made by normalising each digit to a 32×32 bitmap (cropped to its ink,
// centred, aspect kept) and counting the set pixels of each 4×4 block. A drawing or a dropped
// image goes through the same steps, in the client (veil::data::handwriting::uci_digit), so a
// small digit in a large margin reads like the digits the model learned from.
async function toDigit(canvasCtx, width, height) {
  const { data } = canvasCtx.getImageData(0, 0, width, height);
  const digit = await call('uciDigit', { rgba: new Uint8Array(data.buffer), width, height });
  return Float32Array.from(digit.pixels);
}

function drawingTo8x8() {
  return toDigit(ctx, pad.width, pad.height).catch((err) => {
    throw new Error(/blank/.test(err.message) ? 'The pad is empty: draw a digit first.' : err.message);
  });
}

async function imageTo8x8(file) {
  let bitmap;
  try { bitmap = await createImageBitmap(file); } catch {
    throw new Error(`${file.name} is not an image this browser can decode.`);
  }
  const { width, height } = bitmap;
  const c = new OffscreenCanvas(width, height).getContext('2d', { willReadFrequently: true });
  c.drawImage(bitmap, 0, 0);
  try { return await toDigit(c, width, height); } catch (err) { throw new Error(`${file.name}: ${err.message}`); }
}

function showSeen(pixels) {
  const seen = $('seen').getContext('2d');
  for (let k = 0; k < 64; k++) {
    const v = Math.round(255 * Math.min(1, Math.max(0, pixels[k])));
    seen.fillStyle = `rgb(${v},${v},${v})`;
    seen.fillRect((k % 8) * 16, Math.floor(k / 8) * 16, 16, 16);
  }
}

async function classify(pixels) {
  showSeen(pixels);
  const result = await call('classify', { pixels: Array.from(pixels) });
  $('prediction').textContent = result.class_name;
  $('prediction').dataset.label = String(result.label);
  const list = $('probabilities');
  list.replaceChildren(...result.probabilities.map((p, k) => {
    const li = document.createElement('li');
    if (k === result.label) li.className = 'top';
    // Built as elements: the Content-Security-Policy refuses inline style attributes.
    const name = document.createElement('span');
    name.textContent = classes[k] ?? k;
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const pct = document.createElement('span');
    pct.textContent = `${(100 * p).toFixed(1)}%`;
    li.append(name, bar, pct);
    return li;
  }));
  say($('classify-message'), '', '');
}

$('classify-drawing').addEventListener('click', async () => {
  try { await classify(await drawingTo8x8()); } catch (err) { say($('classify-message'), err.message, 'error'); }
});

async function classifyFile(file) {
  if (!file) return;
  try { await classify(await imageTo8x8(file)); } catch (err) { say($('classify-message'), err.message, 'error'); }
}
$('image-file').addEventListener('change', (e) => classifyFile(e.target.files[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  classifyFile(e.dataTransfer.files[0]);
});

start();
