// Veil's first page: backend status, the key (keys-ui.js) and local digit classification.
// All work happens in worker.js; this file only handles the page.
import { $, say, startClient } from './common.js';
import { bindKeys } from './keys-ui.js';

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

// The UCI digits were made by normalising each digit to a 32×32 bitmap and counting the set
// pixels in each 4×4 block (0..16). The drawing goes through the same steps.
function drawingTo8x8() {
  const { data, width, height } = ctx.getImageData(0, 0, pad.width, pad.height);
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    if (data[(y * width + x) * 4] > 127) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
  }
  if (x1 < 0) throw new Error('The pad is empty: draw a digit first.');
  const side = Math.max(x1 - x0, y1 - y0) + 1;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const small = new OffscreenCanvas(32, 32).getContext('2d', { willReadFrequently: true });
  small.fillStyle = '#000';
  small.fillRect(0, 0, 32, 32);
  small.drawImage(pad, cx - side / 2, cy - side / 2, side, side, 0, 0, 32, 32);
  const bits = small.getImageData(0, 0, 32, 32).data;
  const out = new Float32Array(64);
  for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) {
    if (bits[(y * 32 + x) * 4] > 127) out[(y >> 2) * 8 + (x >> 2)] += 1 / 16;
  }
  return out;
}

// A dropped image: average its luminance over an 8×8 grid of equal areas (exact for sizes that
// are multiples of 8), and invert it when the background is light (the model expects light ink
// on a dark background).
async function imageTo8x8(file) {
  let bitmap;
  try { bitmap = await createImageBitmap(file); } catch {
    throw new Error(`${file.name} is not an image this browser can decode.`);
  }
  const { width, height } = bitmap;
  const c = new OffscreenCanvas(width, height).getContext('2d', { willReadFrequently: true });
  c.drawImage(bitmap, 0, 0);
  const { data } = c.getImageData(0, 0, width, height);
  const sums = new Float64Array(64), counts = new Float64Array(64);
  let border = 0, borderCount = 0;
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const i = (y * width + x) * 4;
    const lum = (0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]) / 255;
    const cell = Math.min(7, Math.floor((y * 8) / height)) * 8 + Math.min(7, Math.floor((x * 8) / width));
    sums[cell] += lum; counts[cell] += 1;
    if (x === 0 || y === 0 || x === width - 1 || y === height - 1) { border += lum; borderCount++; }
  }
  const invert = border / borderCount > 0.5;
  return Float32Array.from(sums, (s, k) => { const v = s / counts[k]; return invert ? 1 - v : v; });
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
    li.innerHTML = `<span>${classes[k] ?? k}</span><span class="bar" style="width:${(100 * p).toFixed(1)}%"></span><span>${(100 * p).toFixed(1)}%</span>`;
    return li;
  }));
  say($('classify-message'), '', '');
}

$('classify-drawing').addEventListener('click', async () => {
  try { await classify(drawingTo8x8()); } catch (err) { say($('classify-message'), err.message, 'error'); }
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
