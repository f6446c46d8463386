// OWSD's operations: embeddings (the demo CNN's penultimate layer or the owner's encoders)
// scrambled by the key's generator. The usage count comes from and goes back to the page, which
// keeps it in IndexedDB.
import { owsdUsage } from '../pkg/veil_client.js';
import { veil } from './serve.js';

export const owsdOps = {
  embed: ({ pixels, encoders }) => veil.embed(pixels, Uint32Array.from(encoders || [0])),
  importEncoder: ({ name, bytes }) => veil.importEncoder(name, new Uint8Array(bytes)),
  // OWSD's budget policy (the library's): a fresh usage count for `budget` images (default 9,000).
  owsdUsage: ({ budget }) => owsdUsage(budget ?? undefined),
  scrambleBegin: ({ setup, usage }) => veil.scrambleBegin(setup, usage),
  scrambleStatus: () => veil.scrambleStatus() ?? null,
  scramble: ({ embeddings, force }) => veil.scramble(embeddings, !!force),

  iinTrain: ({ embeddings, cloud, labels, classes, options }) => veil.iinTrain(embeddings, cloud, labels, classes, options),
  iinPredict: ({ embeddings, cloud }) => veil.iinPredict(embeddings, cloud),
};
