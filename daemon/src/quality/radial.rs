//! The radial profile of a frame around the beam centre: the mean of the valid pixels in
//! each of `bins` rings of equal width from the centre to the farthest valid pixel, a pixel
//! belonging to the ring its centre falls in (no splitting; pyFAI's `integrate1d` with
//! `method=("no", "histogram", "cython")` and `unit="r_mm"` gives the same means).

/// A radial profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Beam centre `[x, y]`, pixels.
    pub centre: [f64; 2],
    /// Ring width, pixels.
    pub bin_width: f64,
    /// Mean counts per ring (`NaN`: no valid pixel in it), the first ring at the centre.
    pub mean: Vec<f64>,
    /// Valid pixels per ring.
    pub pixels: Vec<u64>,
}

/// The profile of an image of `shape` whose pixel `i` is `value(i)`, valid where `valid(i)`,
/// around `centre` (`[x, y]`, pixels of the image; pixel `x` spans `x..x + 1`).
pub fn radial_profile(
    shape: [usize; 2],
    value: impl Fn(usize) -> f64,
    valid: impl Fn(usize) -> bool,
    centre: [f64; 2],
    bins: usize,
) -> Profile {
    let [ny, nx] = shape;
    let radius = |i: usize| {
        let (y, x) = ((i / nx) as f64 + 0.5, (i % nx) as f64 + 0.5);
        (x - centre[0]).hypot(y - centre[1])
    };
    let rmax = (0..ny * nx)
        .filter(|&i| valid(i))
        .map(radius)
        .fold(0.0f64, f64::max);
    let bins = bins.max(1);
    let width = if rmax > 0.0 { rmax / bins as f64 } else { 1.0 };
    let mut sum = vec![0.0; bins];
    let mut pixels = vec![0u64; bins];
    for i in (0..ny * nx).filter(|&i| valid(i)) {
        let b = ((radius(i) / width) as usize).min(bins - 1);
        sum[b] += value(i);
        pixels[b] += 1;
    }
    let mean = sum
        .iter()
        .zip(&pixels)
        .map(|(s, &n)| if n == 0 { f64::NAN } else { s / n as f64 })
        .collect();
    Profile {
        centre,
        bin_width: width,
        mean,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_average_what_lies_at_their_radius() {
        let (ny, nx) = (101, 101);
        let centre = [50.5, 50.5];
        let f = |i: usize| {
            let (y, x) = ((i / nx) as f64 + 0.5, (i % nx) as f64 + 0.5);
            (x - centre[0]).hypot(y - centre[1])
        };
        let p = radial_profile([ny, nx], f, |_| true, centre, 10);
        assert_eq!(p.pixels.iter().sum::<u64>(), (ny * nx) as u64);
        for (k, m) in p.mean.iter().enumerate() {
            let mid = (k as f64 + 0.5) * p.bin_width;
            assert!(
                (m - mid).abs() < p.bin_width * 0.6,
                "ring {k}: {m} vs {mid}"
            );
        }
        let none = radial_profile([ny, nx], f, |i| i % 2 == 0, centre, 4);
        assert!(none.pixels.iter().sum::<u64>() < (ny * nx) as u64);
    }
}
