// Operations every page's worker has: the key, the demo model, decoding images, containers and
// the sample digits.
import { sampleDigits, uciDigit } from '../pkg/veil_client.js';
import { veil } from './serve.js';

export const coreOps = {
  generateKey: ({ name }) => veil.generateKey(name),
  exportKey: ({ passphrase }) => veil.exportKey(passphrase || undefined),
  importKey: ({ text, passphrase }) => veil.importKey(text, passphrase || undefined),
  forgetKey: () => veil.forgetKey(),
  status: () => ({ fingerprint: veil.fingerprint() ?? null, name: veil.keyName() }),
  classify: ({ pixels }) => veil.classify(pixels),
  // A drawn or dropped image (RGBA bytes) made into an 8×8 digit as the UCI digits were.
  uciDigit: ({ rgba, width, height }) => uciDigit(rgba, width, height),
  // Image files decoded natively to a shape, at `bins` grey levels (by default the shape's),
  // whatever flows are loaded.
  decodeImagesAs: ({ names, buffers, shape, bins }) => veil.decodeImagesAs(names, buffers, shape.channels, shape.height, shape.width, bins ?? undefined),
  readContainer: ({ bytes }) => veil.readContainer(bytes),
  sampleDigits: ({ n }) => sampleDigits(n),
};
