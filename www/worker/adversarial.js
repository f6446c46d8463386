// Adversarial data encryption's operations: the key's secret correspondence and the owner's base
// model (or the demo model for digits) stay here; only encrypted images go back to the page.
import { stepped, veil } from './serve.js';

let cancelAdversarial = false;

export const adversarialOps = {
  adversarialBegin: ({ setup, base }) =>
    veil.adversarialBegin(setup, base ? new Uint8Array(base) : undefined),
  // Encrypts `size` images per wasm call, reporting progress after each; adversarialCancel
  // stops it between calls (the images already encrypted are dropped with the run).
  async adversarialEncrypt({ pixels, labels, size }, progress) {
    cancelAdversarial = false;
    const n = labels.length;
    const per = pixels.length / Math.max(n, 1);
    if (!Number.isInteger(per) || n === 0) throw new Error(`expected whole images for ${n} labels, got ${pixels.length} values`);
    const out = new Float32Array(pixels.length);
    const psnr = [];
    const ssim = [];
    for (let s = 0; s < n; s += size) {
      const e = Math.min(n, s + size);
      const r = await veil.adversarialEncrypt(pixels.subarray(s * per, e * per), labels.subarray(s, e));
      out.set(r.pixels, s * per);
      psnr.push(...r.psnr);
      ssim.push(...r.ssim);
      progress({ done: e, total: n, what: 'encrypting' });
      await new Promise((r) => setTimeout(r, 0));
      if (cancelAdversarial) throw new Error(`encryption cancelled after ${e} of ${n} images; nothing was kept`);
    }
    return { pixels: out, psnr, ssim };
  },
  adversarialCancel() { cancelAdversarial = true; },
  adversarialContainer: ({ encrypted, labels }) => veil.adversarialContainer(encrypted, labels),
  // The owner's base model, trained here on their labelled images (never sent).
  adversarialTrainBegin: ({ pixels, labels, shape, classes, options }) =>
    veil.adversarialTrainBegin(pixels, labels, shape, classes, options),
  adversarialTrain(_args, progress) {
    cancelAdversarial = false;
    return stepped(
      (n) => veil.adversarialTrainRun(n),
      (p) => `training the base model (epoch ${p.epoch} of ${p.epochs})`,
      progress,
      {
        cancelled: () => cancelAdversarial,
        cancel: () => veil.adversarialTrainCancel(),
        message: 'training cancelled; no base model was kept',
      },
    );
  },
  adversarialBaseModel: () => veil.adversarialBaseModel(),

};
