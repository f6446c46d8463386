//! A user's handwritten digit, made the way the UCI digits were made (Alpaydin and Kaynak,
//! "Optical Recognition of Handwritten Digits", 1998: NIST's preprocessing normalises each digit
//! to a 32×32 bitmap, centred, keeping its aspect ratio, and the 8×8 image counts the set pixels
//! of each 4×4 block, 0..=16).
//!
//! A digit a user draws or drops rarely looks like that: it is a small, thin stroke in a large
//! margin, dark on light or light on dark. Area-averaging such an image straight to 8×8 gives a
//! faint blob that the demo model misreads (23 of 100 real handwritten digits in issue #17).
//! [`uci_digit`] reproduces the preprocessing instead: find the ink, crop it to its bounding box,
//! centre it in a square, fill the 32×32 bitmap, thicken strokes thinner than the UCI digits'
//! own, and count the blocks.

/// Side of the normalised bitmap (NIST's preprocessing).
pub const BITMAP_SIDE: usize = 32;

/// The share of the 32×32 bitmap a UCI digit's ink covers: 30.5 % on average, for every class
/// alike (29.6–32.2 %; a tenth of the digits under 25.5–27.5 %). NIST's preprocessing evidently
/// normalised stroke width too, so a digit's strokes are thickened to the share closest to this.
pub const UCI_INK_SHARE: f32 = 0.305;

/// Why an image holds no digit to read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandwritingError {
    /// Width × height does not match the pixels.
    #[error("{pixels} luminance values do not make a {width}×{height} image")]
    Shape {
        pixels: usize,
        width: usize,
        height: usize,
    },
    /// No contrast: nothing stands out from the background.
    #[error(
        "the image is blank (its brightest and darkest pixels differ by {contrast:.3}): there is no digit to read"
    )]
    Blank {
        /// Largest minus smallest luminance.
        contrast: f32,
    },
}

/// What [`uci_digit`] did, for the page to show.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DigitNormalisation {
    /// The background was light, so luminance was inverted (the digits are light ink on dark).
    pub inverted: bool,
    /// The ink's bounding box in the input: `[x0, y0, x1, y1]`, inclusive.
    pub bbox: [usize; 4],
    /// The ink threshold (Otsu's, on the ink's luminance).
    pub threshold: f32,
    /// How many times the 32×32 bitmap was dilated to come closest to [`UCI_INK_SHARE`].
    pub dilations: usize,
}

/// The 8×8 UCI-style digit (`k/16`, row-major) of an image given as luminance in [0, 1]
/// (`width × height`, row-major), and how it was made. See the module documentation. An 8×8
/// image is taken to be made already: only its polarity and levels are set.
pub fn uci_digit(
    luma: &[f32],
    width: usize,
    height: usize,
) -> Result<([f32; 64], DigitNormalisation), HandwritingError> {
    if width == 0 || height == 0 || luma.len() != width * height {
        return Err(HandwritingError::Shape {
            pixels: luma.len(),
            width,
            height,
        });
    }
    let (lo, hi) = luma
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi - lo < 0.1 || !(hi - lo).is_finite() {
        return Err(HandwritingError::Blank {
            contrast: if (hi - lo).is_finite() { hi - lo } else { 0.0 },
        });
    }
    // Ink is light on dark: invert when the background is light. The background is most of the
    // image (the ink of a UCI digit covers 30 % of its frame), so its median pixel is background
    // even where strokes touch the border.
    let mut sorted = luma.to_vec();
    sorted.sort_by(f32::total_cmp);
    let inverted = sorted[sorted.len() / 2] > (lo + hi) / 2.0;
    let ink: Vec<f32> = luma
        .iter()
        .map(|&v| {
            let v = (v - lo) / (hi - lo);
            if inverted { 1.0 - v } else { v }
        })
        .collect();
    if width == 8 && height == 8 {
        // Already at the digits' resolution (a UCI digit, say): read as it is, on 17 levels.
        let mut out = [0.0f32; 64];
        for (o, &v) in out.iter_mut().zip(luma) {
            let v = if inverted { 1.0 - v } else { v };
            *o = (v.clamp(0.0, 1.0) * 16.0).round() / 16.0;
        }
        return Ok((
            out,
            DigitNormalisation {
                inverted,
                bbox: [0, 0, 7, 7],
                threshold: 0.5,
                dilations: 0,
            },
        ));
    }
    let threshold = otsu(&ink);
    let mask: Vec<bool> = ink.iter().map(|&v| v > threshold).collect();
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for y in 0..height {
        for x in 0..width {
            if mask[y * width + x] {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    // Otsu's threshold lies strictly inside the range, so the brightest pixel is ink.
    let bbox = [x0, y0, x1, y1];
    let bitmap = bitmap_of(&mask, width, height, bbox);
    let (bitmap, dilations) = thicken(bitmap);
    let mut out = [0.0f32; 64];
    for (k, &set) in bitmap.iter().enumerate() {
        if set {
            let (y, x) = (k / BITMAP_SIDE, k % BITMAP_SIDE);
            out[(y / 4) * 8 + x / 4] += 1.0 / 16.0;
        }
    }
    Ok((
        out,
        DigitNormalisation {
            inverted,
            bbox,
            threshold,
            dilations,
        },
    ))
}

/// Otsu's threshold of values in [0, 1] (256 bins): the split that maximises the variance
/// between the two classes.
fn otsu(values: &[f32]) -> f32 {
    let mut hist = [0usize; 256];
    for &v in values {
        hist[(v.clamp(0.0, 1.0) * 255.0).round() as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &h)| i as f64 * h as f64)
        .sum();
    let (mut w0, mut sum0, mut best, mut at) = (0.0f64, 0.0f64, -1.0f64, 127usize);
    for (i, &h) in hist.iter().enumerate().take(255) {
        w0 += h as f64;
        sum0 += i as f64 * h as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            (best, at) = (between, i);
        }
    }
    (at as f32 + 0.5) / 255.0
}

/// The 32×32 bitmap of the ink in `bbox`, centred in a square of the box's longer side (the
/// aspect ratio kept). A bitmap pixel is set when any ink falls in its area (a thin stroke of a
/// large image survives) — or, for a digit smaller than 32 pixels, when the input pixel under
/// its centre is ink.
fn bitmap_of(mask: &[bool], width: usize, height: usize, bbox: [usize; 4]) -> Vec<bool> {
    let [x0, y0, x1, y1] = bbox;
    let side = ((x1 - x0).max(y1 - y0) + 1) as f64;
    let (cx, cy) = ((x0 + x1) as f64 / 2.0 + 0.5, (y0 + y1) as f64 / 2.0 + 0.5);
    let (left, top) = (cx - side / 2.0, cy - side / 2.0);
    let cell = side / BITMAP_SIDE as f64;
    // Summed-area table of the mask, for the ink in any rectangle.
    let mut table = vec![0u32; (width + 1) * (height + 1)];
    for y in 0..height {
        let mut row = 0u32;
        for x in 0..width {
            row += u32::from(mask[y * width + x]);
            table[(y + 1) * (width + 1) + x + 1] = table[y * (width + 1) + x + 1] + row;
        }
    }
    let ink_in = |xa: usize, ya: usize, xb: usize, yb: usize| {
        let t = |x: usize, y: usize| table[y * (width + 1) + x];
        t(xb, yb) + t(xa, ya) - t(xa, yb) - t(xb, ya)
    };
    let clampx = |v: f64| (v.max(0.0) as usize).min(width);
    let clampy = |v: f64| (v.max(0.0) as usize).min(height);
    let mut bitmap = vec![false; BITMAP_SIDE * BITMAP_SIDE];
    for j in 0..BITMAP_SIDE {
        for i in 0..BITMAP_SIDE {
            let (xa, ya) = (left + i as f64 * cell, top + j as f64 * cell);
            bitmap[j * BITMAP_SIDE + i] = if cell < 1.0 {
                let (x, y) = (xa + cell / 2.0, ya + cell / 2.0);
                x >= 0.0
                    && y >= 0.0
                    && (x as usize) < width
                    && (y as usize) < height
                    && mask[y as usize * width + x as usize]
            } else {
                let (a, b) = (clampx(xa.round()), clampx((xa + cell).round()));
                let (c, d) = (clampy(ya.round()), clampy((ya + cell).round()));
                a < b && c < d && ink_in(a, c, b, d) > 0
            };
        }
    }
    bitmap
}

/// Dilates the bitmap (3×3) zero to four times, whichever brings its ink share closest to
/// [`UCI_INK_SHARE`].
fn thicken(bitmap: Vec<bool>) -> (Vec<bool>, usize) {
    let n = BITMAP_SIDE;
    let share = |b: &[bool]| b.iter().filter(|&&s| s).count() as f32 / b.len() as f32;
    let mut best = (bitmap.clone(), 0, (share(&bitmap) - UCI_INK_SHARE).abs());
    let mut current = bitmap;
    for dilations in 1..=4 {
        let before = current.clone();
        for y in 0..n {
            for x in 0..n {
                current[y * n + x] = (y.saturating_sub(1)..=(y + 1).min(n - 1)).any(|yy| {
                    (x.saturating_sub(1)..=(x + 1).min(n - 1)).any(|xx| before[yy * n + xx])
                });
            }
        }
        let off = (share(&current) - UCI_INK_SHARE).abs();
        if off < best.2 {
            best = (current.clone(), dilations, off);
        }
    }
    (best.0, best.1)
}

/// The plain 8×8 area average of an image (inverted when its border is light): how the home page
/// read a dropped image before [`uci_digit`], kept to measure what normalising gains.
pub fn area_average(luma: &[f32], width: usize, height: usize) -> [f32; 64] {
    let (mut sums, mut counts) = ([0.0f32; 64], [0.0f32; 64]);
    let mut border = (0.0, 0.0);
    for y in 0..height {
        for x in 0..width {
            let v = luma[y * width + x];
            let cell = (y * 8 / height).min(7) * 8 + (x * 8 / width).min(7);
            sums[cell] += v;
            counts[cell] += 1.0;
            if x == 0 || y == 0 || x == width - 1 || y == height - 1 {
                border = (border.0 + v, border.1 + 1.0);
            }
        }
    }
    let invert = border.0 / border.1 > 0.5;
    std::array::from_fn(|k| {
        let v = sums[k] / counts[k].max(1.0);
        if invert { 1.0 - v } else { v }
    })
}

/// Luminance in [0, 1] of RGBA bytes (a canvas's `ImageData`), composited on white where
/// transparent (a PNG drawn on a transparent background reads as dark ink on white).
pub fn luma_of_rgba(rgba: &[u8]) -> Vec<f32> {
    rgba.chunks_exact(4)
        .map(|p| {
            let a = f32::from(p[3]) / 255.0;
            let l = (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
                / 255.0;
            a * l + (1.0 - a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` image, dark background, with a light rectangle.
    fn rect(w: usize, h: usize, r: [usize; 4]) -> Vec<f32> {
        (0..w * h)
            .map(|k| {
                let (x, y) = (k % w, k / w);
                if x >= r[0] && x <= r[2] && y >= r[1] && y <= r[3] {
                    0.9
                } else {
                    0.1
                }
            })
            .collect()
    }

    #[test]
    fn a_small_bar_in_a_large_margin_fills_the_frame_centred() {
        // A vertical bar, 4 wide and 20 tall, in the top-left of a 100×80 image.
        let img = rect(100, 80, [10, 5, 13, 24]);
        let (d, how) = uci_digit(&img, 100, 80).unwrap();
        assert_eq!(how.bbox, [10, 5, 13, 24]);
        assert!(!how.inverted);
        // Centred: columns 3 and 4 hold the ink, symmetric; the top and bottom rows too.
        let col = |x: usize| (0..8).map(|y| d[y * 8 + x]).sum::<f32>();
        assert!(col(3) > 4.0 && col(4) > 4.0, "{d:?}");
        assert_eq!(col(0), 0.0);
        assert!((col(2) - col(5)).abs() < 1e-6);
        assert!(d[3] > 0.0 && d[7 * 8 + 3] > 0.0);
    }

    #[test]
    fn polarity_and_stroke_width_do_not_change_the_digit() {
        let light = rect(60, 60, [20, 10, 29, 49]);
        let dark: Vec<f32> = light.iter().map(|v| 1.0 - v).collect();
        let (a, how_a) = uci_digit(&light, 60, 60).unwrap();
        let (b, how_b) = uci_digit(&dark, 60, 60).unwrap();
        assert_eq!(a, b);
        assert!(!how_a.inverted && how_b.inverted);
        // A 1-pixel line is thickened towards the UCI digits' ink share.
        let thin = rect(200, 200, [100, 20, 100, 180]);
        let (t, how) = uci_digit(&thin, 200, 200).unwrap();
        assert!(how.dilations > 0);
        let share = t.iter().sum::<f32>() / 64.0;
        assert!(share > 0.15, "{share}");
    }

    #[test]
    fn blank_and_misshapen_inputs_are_named() {
        assert!(matches!(
            uci_digit(&[0.5; 64], 8, 8),
            Err(HandwritingError::Blank { .. })
        ));
        assert!(matches!(
            uci_digit(&[0.5; 10], 8, 8),
            Err(HandwritingError::Shape { .. })
        ));
        assert!(
            uci_digit(&[f32::NAN; 64], 8, 8)
                .unwrap_err()
                .to_string()
                .contains("blank")
        );
    }

    #[test]
    fn every_uci_digit_is_read_as_it_is_and_inverted_back() {
        let data = crate::data::digits();
        for i in 0..data.len() {
            let img = data.image(i);
            let (d, how) = uci_digit(img, 8, 8).unwrap();
            assert_eq!(d.as_slice(), img, "digit {i}");
            assert!(!how.inverted && how.dilations == 0);
            let dark: Vec<f32> = img.iter().map(|v| 1.0 - v).collect();
            let (d, how) = uci_digit(&dark, 8, 8).unwrap();
            assert!(how.inverted, "digit {i}");
            assert_eq!(d.as_slice(), img, "digit {i}");
        }
    }

    #[test]
    fn transparent_pixels_read_as_white() {
        assert_eq!(luma_of_rgba(&[0, 0, 0, 0, 0, 0, 0, 255]), vec![1.0, 0.0]);
    }
}

/// Digits drawn by a script, as a held-out test of [`uci_digit`] and the demo model on
/// handwriting they never saw: each digit a few pen strokes (polylines and arcs), slanted,
/// sheared, stretched and thickened at random, placed at a random size and offset in a canvas
/// of random size (some 28×28, like MNIST), dark on light or light on dark, with sensor noise.
pub mod scripted {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    /// One drawn digit: luminance in [0, 1], row-major.
    #[derive(Debug, Clone)]
    pub struct DrawnDigit {
        pub luma: Vec<f32>,
        pub width: usize,
        pub height: usize,
        pub label: u32,
    }

    type Stroke = Vec<(f32, f32)>;

    /// An arc of the ellipse centred at `(cx, cy)` with radii `(rx, ry)`, from `a0` to `a1`
    /// degrees (0° points right, 90° down: screen coordinates).
    fn arc(cx: f32, cy: f32, rx: f32, ry: f32, a0: f32, a1: f32) -> Stroke {
        let n = 24;
        (0..=n)
            .map(|k| {
                let a = (a0 + (a1 - a0) * k as f32 / n as f32).to_radians();
                (cx + rx * a.cos(), cy + ry * a.sin())
            })
            .collect()
    }

    /// The strokes of digit `d` in the unit box (x right, y down), one common way of writing
    /// it; `variant` picks another common way where there is one.
    fn strokes(d: u32, variant: bool) -> Vec<Stroke> {
        match d {
            0 => vec![arc(0.5, 0.5, 0.3, 0.46, 0.0, 360.0)],
            1 if variant => vec![vec![(0.5, 0.04), (0.5, 0.96)]],
            1 => vec![vec![(0.32, 0.22), (0.55, 0.04), (0.55, 0.96)]],
            2 => {
                let mut s = arc(0.5, 0.3, 0.28, 0.26, 200.0, 380.0);
                s.extend([(0.2, 0.95), (0.82, 0.95)]);
                vec![s]
            }
            3 => {
                let mut s = arc(0.48, 0.27, 0.26, 0.23, 210.0, 450.0);
                s.extend(arc(0.48, 0.73, 0.3, 0.23, 270.0, 510.0));
                vec![s]
            }
            4 if variant => vec![
                vec![(0.6, 0.04), (0.15, 0.66), (0.85, 0.66)],
                vec![(0.62, 0.3), (0.62, 0.96)],
            ],
            4 => vec![
                vec![(0.25, 0.04), (0.2, 0.58), (0.82, 0.58)],
                vec![(0.68, 0.1), (0.68, 0.96)],
            ],
            5 => {
                let mut s = vec![(0.78, 0.05), (0.3, 0.05), (0.26, 0.45)];
                s.extend(arc(0.5, 0.67, 0.3, 0.28, 235.0, 500.0));
                vec![s]
            }
            6 => {
                let mut s = vec![(0.72, 0.06), (0.45, 0.25), (0.26, 0.55)];
                s.extend(arc(0.5, 0.72, 0.25, 0.23, 180.0, 540.0));
                vec![s]
            }
            7 if variant => vec![
                vec![(0.18, 0.05), (0.82, 0.05), (0.42, 0.96)],
                vec![(0.35, 0.5), (0.75, 0.5)],
            ],
            7 => vec![vec![(0.18, 0.05), (0.82, 0.05), (0.42, 0.96)]],
            8 => vec![
                arc(0.5, 0.26, 0.22, 0.22, 0.0, 360.0),
                arc(0.5, 0.72, 0.27, 0.24, 0.0, 360.0),
            ],
            _ => {
                let mut s = arc(0.5, 0.3, 0.25, 0.25, 0.0, 360.0);
                s.extend([(0.72, 0.42), (0.68, 0.96)]);
                vec![s]
            }
        }
    }

    /// Distance from `p` to the segment `a–b`.
    fn to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let t = if len2 == 0.0 {
            0.0
        } else {
            (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
        };
        let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
        (qx * qx + qy * qy).sqrt()
    }

    /// `per_class` drawn digits of each class 0..=9, reproducible from `seed`.
    pub fn draw_digits(per_class: usize, seed: u64) -> Vec<DrawnDigit> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(10 * per_class);
        for label in 0..10u32 {
            for k in 0..per_class {
                // Canvas: a third 28×28 (MNIST's size), the rest 40..160 wide and high.
                let (w, h) = if k % 3 == 0 {
                    (28, 28)
                } else {
                    (rng.random_range(40..160), rng.random_range(40..160))
                };
                // The digit's height: 35..90 % of the canvas (a small digit in a large margin
                // at the low end), its width 0.55..0.8 of its height.
                let dh = rng.random_range(0.35..0.9) * h.min(w) as f32;
                let dw = dh * rng.random_range(0.55..0.8);
                let ox = rng.random_range(0.0..=(w as f32 - dw).max(0.0));
                let oy = rng.random_range(0.0..=(h as f32 - dh).max(0.0));
                let shear = rng.random_range(-0.25..0.25f32);
                let angle = rng.random_range(-10.0..10.0f32).to_radians();
                let pen = dh * rng.random_range(0.06..0.14);
                let (s, c) = angle.sin_cos();
                let place = |(x, y): (f32, f32)| {
                    let (x, y) = (x - 0.5 + shear * (0.5 - y), y - 0.5);
                    let (x, y) = (x * dw, y * dh);
                    (ox + dw / 2.0 + c * x - s * y, oy + dh / 2.0 + s * x + c * y)
                };
                let segments: Vec<((f32, f32), (f32, f32))> = strokes(label, rng.random_bool(0.5))
                    .iter()
                    .flat_map(|st| {
                        st.windows(2)
                            .map(|p| (place(p[0]), place(p[1])))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let dark_on_light = rng.random_bool(0.5);
                let (paper, ink) = if dark_on_light {
                    (rng.random_range(0.8..1.0f32), rng.random_range(0.0..0.3f32))
                } else {
                    (rng.random_range(0.0..0.2f32), rng.random_range(0.7..1.0f32))
                };
                let luma = (0..w * h)
                    .map(|i| {
                        let p = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                        let d = segments
                            .iter()
                            .map(|&(a, b)| to_segment(p, a, b))
                            .fold(f32::INFINITY, f32::min);
                        // Anti-aliased pen edge, one pixel wide.
                        let cover = (pen / 2.0 - d + 0.5).clamp(0.0, 1.0);
                        let noise = rng.random_range(-0.04..0.04f32);
                        (paper + (ink - paper) * cover + noise).clamp(0.0, 1.0)
                    })
                    .collect();
                out.push(DrawnDigit {
                    luma,
                    width: w,
                    height: h,
                    label,
                });
            }
        }
        out
    }
}
