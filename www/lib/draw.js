// Images in pages: their shapes, and drawing them into canvases.

// Values in one image of `shape` ({channels, height, width}).
export const imageLen = (s) => s.channels * s.height * s.width;

// `shape` as the pages write it: C×H×W.
export const shapeText = (s) => `${s.channels}×${s.height}×${s.width}`;

// Draws `pixels` (one C·H·W image in [0, 1]; values outside are clamped, missing ones are 0)
// into `canvas`.
export function drawImage(canvas, pixels, shape) {
  const { channels: c, height: h, width: w } = shape;
  const img = new ImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const at = (ch) => Math.round(Math.min(1, Math.max(0, pixels[ch * h * w + i] ?? 0)) * 255);
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

// A new canvas of `width`×`height` showing one image.
export function imageCanvas(pixels, shape, width, height = width * (shape.height / shape.width)) {
  const c = document.createElement('canvas');
  c.width = width;
  c.height = height;
  drawImage(c, pixels, shape);
  return c;
}
