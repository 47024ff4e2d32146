//! A simple spot finder for photon-counting data, run on a sample of frames:
//!
//! 1. The local mean `m` of every valid pixel: the mean of the valid pixels in the square of
//!    `2 r + 1` pixels a side around it (itself included), from running column sums (memory
//!    of one image row, time of one pass).
//! 2. A pixel is strong when it has at least `min_counts` and exceeds `m` by `sigma`
//!    counting-statistics deviations: `v > m + sigma * sqrt(max(m, 1))`.
//! 3. Strong pixels touching (8 neighbours) form a group; a group of at least `min_pixels`
//!    is a spot, at the centroid of its pixels weighted by `v - m`.
//!
//! Invalid pixels (masked, in a module gap, of a module the frame lacks) are neither
//! background nor strong.

/// The finder's settings (`[quality] spot_*`).
#[derive(Debug, Clone, Copy)]
pub struct SpotSettings {
    /// Deviations above the local mean.
    pub sigma: f64,
    /// Counts a strong pixel has at least.
    pub min_counts: f64,
    /// Half side of the background square.
    pub radius: u32,
    /// Pixels of a spot at least.
    pub min_pixels: u32,
}

/// One spot.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spot {
    /// Centroid row, in pixels (pixel `y` spans `y..y + 1`, so its centre is `y + 0.5`).
    pub y: f64,
    /// Centroid column.
    pub x: f64,
    /// Counts above the local mean, summed over its pixels.
    pub intensity: f64,
    /// Its strong pixels.
    pub pixels: u32,
}

/// Buffers kept from one frame to the next.
#[derive(Debug, Default)]
pub struct SpotScratch {
    col_sum: Vec<f64>,
    col_n: Vec<u32>,
    strong: Vec<(u64, f64)>,
    parent: Vec<u32>,
}

/// The spots of an image of `shape` whose pixel `i` is `value(i)`, valid where `valid(i)`.
pub fn find_spots(
    shape: [usize; 2],
    value: impl Fn(usize) -> f64,
    valid: impl Fn(usize) -> bool,
    s: &SpotSettings,
    scratch: &mut SpotScratch,
) -> Vec<Spot> {
    let [ny, nx] = shape;
    let r = s.radius as usize;
    let sc = scratch;
    sc.col_sum.clear();
    sc.col_sum.resize(nx, 0.0);
    sc.col_n.clear();
    sc.col_n.resize(nx, 0);
    sc.strong.clear();
    let add_row = |y: usize, sign: f64, sc: &mut SpotScratch| {
        for x in 0..nx {
            let i = y * nx + x;
            if valid(i) {
                sc.col_sum[x] += sign * value(i);
                if sign > 0.0 {
                    sc.col_n[x] += 1;
                } else {
                    sc.col_n[x] -= 1;
                }
            }
        }
    };
    for y in 0..r.min(ny) {
        add_row(y, 1.0, sc);
    }
    for y in 0..ny {
        if y + r < ny {
            add_row(y + r, 1.0, sc);
        }
        if y > r {
            add_row(y - r - 1, -1.0, sc);
        }
        // Slide along the row over the column sums.
        let (mut sum, mut n) = (0.0, 0u32);
        for x in 0..r.min(nx) {
            sum += sc.col_sum[x];
            n += sc.col_n[x];
        }
        for x in 0..nx {
            if x + r < nx {
                sum += sc.col_sum[x + r];
                n += sc.col_n[x + r];
            }
            if x > r {
                sum -= sc.col_sum[x - r - 1];
                n -= sc.col_n[x - r - 1];
            }
            let i = y * nx + x;
            if n == 0 || !valid(i) {
                continue;
            }
            let v = value(i);
            let m = sum / f64::from(n);
            if v >= s.min_counts && v > m + s.sigma * m.max(1.0).sqrt() {
                sc.strong.push((i as u64, v - m));
            }
        }
    }
    group(&mut sc.strong, &mut sc.parent, nx, s.min_pixels)
}

/// Groups the strong pixels (in row-scan order) by 8-connectivity into spots.
fn group(
    strong: &mut [(u64, f64)],
    parent: &mut Vec<u32>,
    nx: usize,
    min_pixels: u32,
) -> Vec<Spot> {
    parent.clear();
    parent.extend(0..strong.len() as u32);
    fn root(parent: &mut [u32], mut k: u32) -> u32 {
        while parent[k as usize] != k {
            parent[k as usize] = parent[parent[k as usize] as usize];
            k = parent[k as usize];
        }
        k
    }
    let nx = nx as u64;
    for k in 0..strong.len() {
        let i = strong[k].0;
        let (y, x) = (i / nx, i % nx);
        // The neighbours already seen: left, and the three above.
        let mut neighbours = [None; 4];
        if x > 0 {
            neighbours[0] = Some(i - 1);
        }
        if y > 0 {
            let up = i - nx;
            neighbours[1] = Some(up);
            if x > 0 {
                neighbours[2] = Some(up - 1);
            }
            if x + 1 < nx {
                neighbours[3] = Some(up + 1);
            }
        }
        for n in neighbours.into_iter().flatten() {
            if let Ok(j) = strong[..k].binary_search_by_key(&n, |p| p.0) {
                let (a, b) = (root(parent, k as u32), root(parent, j as u32));
                parent[a.max(b) as usize] = a.min(b);
            }
        }
    }
    // Sums per root, in the order roots first appear.
    let mut spots: Vec<(u32, Spot)> = Vec::new();
    for (k, &(i, w)) in strong.iter().enumerate() {
        let rt = root(parent, k as u32);
        let (y, x) = ((i / nx) as f64 + 0.5, (i % nx) as f64 + 0.5);
        let at = match spots.iter().position(|s| s.0 == rt) {
            Some(at) => at,
            None => {
                spots.push((
                    rt,
                    Spot {
                        y: 0.0,
                        x: 0.0,
                        intensity: 0.0,
                        pixels: 0,
                    },
                ));
                spots.len() - 1
            }
        };
        let s = &mut spots[at].1;
        s.y += y * w;
        s.x += x * w;
        s.intensity += w;
        s.pixels += 1;
    }
    spots
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.pixels >= min_pixels && s.intensity > 0.0)
        .map(|s| Spot {
            y: s.y / s.intensity,
            x: s.x / s.intensity,
            ..s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SpotSettings = SpotSettings {
        sigma: 6.0,
        min_counts: 3.0,
        radius: 5,
        min_pixels: 2,
    };

    #[test]
    fn two_peaks_on_a_flat_background_are_two_spots() {
        let (ny, nx) = (64, 80);
        let mut img = vec![1.0f64; ny * nx];
        for (cy, cx, h) in [(10.0, 12.0, 500.0), (40.0, 60.0, 80.0)] {
            for y in 0..ny {
                for x in 0..nx {
                    let d2: f64 = (y as f64 + 0.5 - cy).powi(2) + (x as f64 + 0.5 - cx).powi(2);
                    img[y * nx + x] += (h * (-d2 / 2.0).exp()).round();
                }
            }
        }
        img[30 * nx + 30] = 60.0; // a hot pixel alone: too small
        let spots = find_spots(
            [ny, nx],
            |i| img[i],
            |_| true,
            &S,
            &mut SpotScratch::default(),
        );
        assert_eq!(spots.len(), 2, "{spots:?}");
        assert!((spots[0].y - 10.0).abs() < 0.3 && (spots[0].x - 12.0).abs() < 0.3);
        assert!((spots[1].y - 40.0).abs() < 0.3 && (spots[1].x - 60.0).abs() < 0.3);
    }

    #[test]
    fn invalid_pixels_are_never_strong() {
        let (ny, nx) = (20, 20);
        let img = vec![0.0f64; ny * nx];
        let high = |i: usize| if i % nx < 3 { 65535.0 } else { img[i] };
        let spots = find_spots(
            [ny, nx],
            high,
            |i| i % nx >= 3,
            &S,
            &mut SpotScratch::default(),
        );
        assert!(spots.is_empty());
    }
}
