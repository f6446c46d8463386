"""PyTorch reference for `cargo xtask bench --peers`: flow-rotation encryption through the same
Glow as Veil's (shared/src/flow/glow.rs), written the way a PyTorch user would, in eval mode
without autograd.

Same architecture, layer by layer: 2×2 squeeze; per step ActNorm, an LU-parametrised invertible
1×1 convolution, an affine coupling (3×3 conv → ReLU → 1×1 conv → ReLU → zero-initialised 3×3
conv with a learned log-scale; scale σ(raw + 2)); a learned prior at each split and at the top.
Encryption: logit preprocessing (8-bit, α = 0.05, mid-bin), the flow to standardised latents,
one dense Haar rotation (the `C·H·W`-square matrix formed once, as a PyTorch user would), the
prior-driven decode and the inverse flow, then back to pixels. The parameter count is printed so
that the bench can check it against Veil's.

Each shape's ciphertexts are decrypted once (untimed) and checked against the images, so the
timed path is a real encryption. Prints one JSON object: torch's version and threads, and per shape the parameter count and
encrypted images/s (batch 128, two warm-ups, then the best of 3 rounds of 3 batches, as Veil's
figure).
"""

import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ALPHA = 0.05
BINS = 256
# Timing: the best of ROUNDS rounds of 3 batches, as Veil's figure.
ROUNDS = 3


def squeeze(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x):
    b, c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class ActNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, c, 1, 1))

    def data_init(self, x):
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(1)
        std = ((flat - mean[:, None]) ** 2).mean(1).sqrt()
        self.bias.data = -mean.view(1, -1, 1, 1)
        self.log_scale.data = -torch.log(std + 1e-6).view(1, -1, 1, 1)

    def forward(self, x):
        return (x + self.bias) * self.log_scale.exp()

    def inverse(self, y):
        return y * (-self.log_scale).exp() - self.bias


class InvConv1x1(nn.Module):
    def __init__(self, c, gen):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
        p, l, u = torch.linalg.lu(q)
        d = torch.diagonal(u)
        self.register_buffer("permutation", p.float())
        self.lower = nn.Parameter(torch.tril(l, -1).float())
        self.upper = nn.Parameter(torch.triu(u, 1).float())
        self.log_s = nn.Parameter(d.abs().log().float())
        self.register_buffer("sign_s", d.sign().float())

    def weight(self):
        eye = torch.eye(self.log_s.shape[0])
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * self.log_s.exp())
        return self.permutation @ lower @ upper

    def forward(self, x):
        return F.conv2d(x, self.weight()[:, :, None, None])

    def inverse(self, y):
        return F.conv2d(y, torch.inverse(self.weight())[:, :, None, None])


class ZeroConv2d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x):
        return self.conv(x) * torch.exp(3.0 * self.logs)


class AffineCoupling(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(c // 2, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.out = ZeroConv2d(hidden, c)

    def params(self, xa):
        h = self.out(F.relu(self.conv2(F.relu(self.conv1(xa)))))
        shift, raw = h.chunk(2, 1)
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x):
        xa, xb = x.chunk(2, 1)
        shift, scale = self.params(xa)
        return torch.cat([xa, (xb + shift) * scale], 1)

    def inverse(self, y):
        ya, yb = y.chunk(2, 1)
        shift, scale = self.params(ya)
        return torch.cat([ya, yb / scale - shift], 1)


class Step(nn.Module):
    def __init__(self, c, hidden, gen):
        super().__init__()
        self.actnorm = ActNorm(c)
        self.invconv = InvConv1x1(c, gen)
        self.coupling = AffineCoupling(c, hidden)

    def forward(self, x):
        return self.coupling(self.invconv(self.actnorm(x)))

    def inverse(self, y):
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(y)))


class Glow(nn.Module):
    def __init__(self, channels, side, levels=2, steps=4, hidden=48, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c, s = channels, side
        self.steps = nn.ModuleList()
        self.priors = nn.ModuleList()
        for level in range(levels):
            c, s = 4 * c, s // 2
            self.steps.append(nn.ModuleList([Step(c, hidden, gen) for _ in range(steps)]))
            if level + 1 < levels:
                self.priors.append(ZeroConv2d(c // 2, c))
                c //= 2
        self.top_prior = nn.Parameter(torch.zeros(1, 2 * c, s, s))

    def data_init(self, x):
        h = x
        for level, steps in enumerate(self.steps):
            h = squeeze(h)
            for step in steps:
                step.actnorm.data_init(h)
                h = step(h)
            if level < len(self.priors):
                h = h[:, : h.shape[1] // 2]

    def to_eps(self, x):
        zs, kept, h = [], [], x
        for level, steps in enumerate(self.steps):
            h = squeeze(h)
            for step in steps:
                h = step(h)
            if level < len(self.priors):
                half = h.shape[1] // 2
                zs.append(h[:, half:])
                h = h[:, :half]
                kept.append(h)
        zs.append(h)
        eps = []
        for level, z in enumerate(zs):
            p = self.priors[level](kept[level]) if level < len(kept) else self.top_prior.expand(z.shape[0], -1, -1, -1)
            mean, logs = p.chunk(2, 1)
            eps.append((z - mean) * torch.exp(-logs))
        return eps

    def decode_eps(self, eps):
        n = len(self.steps)
        mean, logs = self.top_prior.expand(eps[0].shape[0], -1, -1, -1).chunk(2, 1)
        h = mean + logs.exp() * eps[n - 1]
        for level in reversed(range(n)):
            if level < len(self.priors):
                mean, logs = self.priors[level](h).chunk(2, 1)
                h = torch.cat([h, mean + logs.exp() * eps[level]], 1)
            for step in reversed(self.steps[level]):
                h = step.inverse(h)
            h = unsqueeze(h)
        return h


def to_logit(x):
    k = torch.round(x * (BINS - 1)).clamp(0, BINS - 1)
    y = (k + 0.5) / BINS
    one_minus_y = (BINS - k - 0.5) / BINS
    p = y * (1 - ALPHA) + ALPHA
    return torch.log(p) - (torch.log(one_minus_y) + torch.log(torch.tensor(1 - ALPHA)))


def encrypt(glow, rotation, x):
    return rotate(glow, to_logit(x), rotation.T)


def decrypt(glow, rotation, c):
    p = c * (1 - ALPHA) + ALPHA
    return rotate(glow, torch.log(p) - torch.log1p(-p), rotation)


def rotate(glow, s, matrix):
    eps = glow.to_eps(s)
    shapes = [e.shape for e in eps]
    flat = torch.cat([e.flatten(1) for e in eps], 1) @ matrix
    parts, offset = [], 0
    for shape in shapes:
        n = shape[1] * shape[2] * shape[3]
        parts.append(flat[:, offset : offset + n].reshape(shape))
        offset += n
    return (torch.sigmoid(glow.decode_eps(parts)) - ALPHA) / (1 - ALPHA)


def main():
    shapes = json.loads(sys.argv[1]) if len(sys.argv) > 1 else [[1, 28], [3, 32]]
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    batch, reps = 128, 3
    for channels, side in shapes:
        tag = f"{channels}x{side}x{side}"
        glow = Glow(channels, side).eval()
        x = torch.rand(batch, channels, side, side)
        with torch.inference_mode():
            dequantised = (torch.round(x * (BINS - 1)) + torch.rand_like(x).clamp(1e-4, 1 - 1e-4)) / BINS
            p = dequantised * (1 - ALPHA) + ALPHA
            glow.data_init(torch.log(p) - torch.log1p(-p))
            m = channels * side * side
            q, r = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
            rotation = (q * torch.sign(torch.diagonal(r))).float()
            c = encrypt(glow, rotation, x)
            assert torch.isfinite(c).all(), "non-finite ciphertext"
            # Checked once, untimed: the ciphertexts decrypt to the images' bins.
            back = torch.round(decrypt(glow, rotation, c) * BINS - 0.5) / (BINS - 1)
            assert (back - torch.round(x * (BINS - 1)) / (BINS - 1)).abs().max() < 1e-3, "no round trip"
            encrypt(glow, rotation, x)
            seconds = float("inf")
            for _ in range(ROUNDS):
                start = time.perf_counter()
                for _ in range(reps):
                    encrypt(glow, rotation, x)
                seconds = min(seconds, time.perf_counter() - start)
        out[f"params_{tag}"] = sum(p.numel() for p in glow.parameters())
        out[f"encrypt_{tag}_images_per_s"] = batch * reps / seconds
    print(json.dumps(out))


if __name__ == "__main__":
    main()
