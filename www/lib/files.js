// Choosing images: folder and file inputs, dropped folders (classes from sub-folders), and
// decoding them in the worker with the native decoder.

// The class of a file in a folder of class sub-folders: its parent folder's name (null for a
// loose file).
export function classOf(path) {
  const parts = path.split('/').filter(Boolean);
  return parts.length >= 2 ? parts[parts.length - 2] : null;
}

const pathOf = (e) => e.file.webkitRelativePath || e.file.name;

// The image files among `entries` ({file, className}), in path order, so that a folder always
// gives the same dataset whatever order the browser lists it in.
export function imageEntries(entries) {
  return entries
    .filter((e) => /\.(png|jpe?g|gif|bmp|webp)$/i.test(e.file.name))
    .sort((a, b) => (pathOf(a) < pathOf(b) ? -1 : pathOf(a) > pathOf(b) ? 1 : 0));
}

// Entries of a folder input (class from the sub-folder) or a plain files input (no class).
export function inputEntries(input) {
  return [...input.files].map((file) => ({
    file,
    className: input.webkitdirectory ? classOf(file.webkitRelativePath || file.name) : null,
  }));
}

// The class index of each entry: its folder's class, or `fallback` for loose files. Throws,
// naming them, when folders are not classes of `classes`.
export function labelsFor(entries, classes, fallback) {
  const unknown = new Set();
  const labels = Uint32Array.from(entries, (e) => {
    if (e.className === null) return fallback;
    const k = classes.indexOf(e.className);
    if (k < 0) unknown.add(e.className);
    return k;
  });
  if (unknown.size) {
    throw new Error(`the folders ${[...unknown].map((c) => `"${c}"`).join(', ')} are not classes of these flows (${classes.join(', ')})`);
  }
  return labels;
}

// Decodes the entries' files in the worker (the native decoder, resized to `shape`), 256 at a
// time; one Float32Array of [N, C, H, W] pixels. They are quantised as the loaded flows read
// them, or with `flows: false` as images of `shape` are read (the library's default: the UCI
// digits' 17 grey levels for 8×8 grey images, 8 bits otherwise).
export async function decodeEntries(call, entries, shape, onProgress, { flows = true } = {}) {
  const len = shape.channels * shape.height * shape.width;
  const out = new Float32Array(entries.length * len);
  for (let s = 0; s < entries.length; s += 256) {
    const part = entries.slice(s, s + 256);
    const buffers = await Promise.all(part.map(async (e) => new Uint8Array(await e.file.arrayBuffer())));
    const names = part.map((e) => e.file.webkitRelativePath || e.file.name);
    const transfer = buffers.map((b) => b.buffer);
    const pixels = flows
      ? await call('decodeImages', { names, buffers }, { transfer })
      : await call('decodeImagesAs', { names, buffers, shape }, { transfer });
    out.set(pixels, s * len);
    onProgress({ done: Math.min(entries.length, s + 256), total: entries.length, what: 'reading images' });
  }
  return out;
}

async function walk(entry, path, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, className: classOf(`${path}/${file.name}`) });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const child of batch) await walk(child, `${path}/${entry.name}`, out);
    }
  }
}

// Makes `zone` accept dropped folders (walked; classes from sub-folders) and files (no class);
// calls `onEntries(entries)` or `onError(message)`.
export function bindDrop(zone, onEntries, onError) {
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', async (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const items = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
    const out = [];
    try {
      for (const entry of items) await walk(entry, '', out);
      const folders = items.some((i) => i.isDirectory);
      onEntries(folders ? out : out.map((x) => ({ ...x, className: null })));
    } catch (err) { onError(`the dropped items could not be read: ${err.message}`); }
  });
}

