//! The statistics the guard judges with, as automated canary analysis does
//! (Kayenta, Flagger): a one-sided test of two proportions for error and
//! outcome rates, Mann-Whitney U for latency (on histogram bins, with the
//! tie correction), a chi-square goodness of fit for backend shares, and
//! Wilson bounds where there is no baseline to compare with. Each test
//! needs a minimum sample and an effect large enough to matter, so one
//! failure in five requests is no verdict and a tiny shift over a busy
//! minute is no alarm.

/// Standard normal upper tail: P(Z > z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' erfc, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The z value whose upper tail is `p` (Acklam's rational approximation,
/// relative error < 1.2e-9 before refinement; plenty for thresholds).
pub fn normal_quantile_upper(p: f64) -> f64 {
    -normal_quantile(p.clamp(1e-300, 1.0 - 1e-16))
}

fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let lo = 0.02425;
    if p < lo {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - lo {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// The lower and upper Wilson score bounds of `k` in `n` at one-sided
/// confidence `confidence`.
pub fn wilson(k: u64, n: u64, confidence: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = normal_quantile_upper(1.0 - confidence);
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * ((p * (1.0 - p) + z2 / (4.0 * n)) / n).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One-sided p-value that the rate `k_new/n_new` is above `k_base/n_base`
/// (pooled two-proportion z-test). A baseline with no failures is no
/// reason to pass: the pooled rate is then the new side's alone.
pub fn proportion_rise(k_new: u64, n_new: u64, k_base: u64, n_base: u64) -> f64 {
    if n_new == 0 || n_base == 0 {
        return 1.0;
    }
    let (a, b) = (k_new as f64 / n_new as f64, k_base as f64 / n_base as f64);
    let pooled = (k_new + k_base) as f64 / (n_new + n_base) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n_new as f64 + 1.0 / n_base as f64)).sqrt();
    if se == 0.0 {
        return if a > b { 0.0 } else { 1.0 };
    }
    normal_sf((a - b) / se)
}

/// One-sided p-value that the rate `k_new/n_new` is above `k_base/n_base`,
/// exactly (Fisher's test: the hypergeometric tail). Where the z-test
/// calls one failure in twenty requests against a clean baseline
/// significant, this does not; it is what judges small counts. Falls back
/// to the z-test when the tail would take more than 20,000 terms.
pub fn fisher_rise(k_new: u64, n_new: u64, k_base: u64, n_base: u64) -> f64 {
    if n_new == 0 || n_base == 0 {
        return 1.0;
    }
    let (n, k) = (n_new + n_base, k_new + k_base);
    let top = k.min(n_new);
    if top.saturating_sub(k_new) > 20_000 {
        return proportion_rise(k_new, n_new, k_base, n_base);
    }
    let denom = ln_choose(n, n_new);
    (k_new..=top)
        .map(|x| (ln_choose(k, x) + ln_choose(n - k, n_new - x) - denom).exp())
        .sum::<f64>()
        .min(1.0)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    if k > n {
        return f64::NEG_INFINITY;
    }
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |a, (i, g)| a + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// One-sided p-value that values in histogram `new` are larger than in
/// `base` (Mann-Whitney U, normal approximation with the tie correction;
/// each bin is a tie group). Both are counts over the same bins.
pub fn mann_whitney_greater(new: &[u64], base: &[u64]) -> f64 {
    let (n1, n2) = (
        new.iter().sum::<u64>() as f64,
        base.iter().sum::<u64>() as f64,
    );
    if n1 == 0.0 || n2 == 0.0 {
        return 1.0;
    }
    // U of `new`: for each of its values, the base values below it, plus
    // half of those tied with it.
    let (mut below, mut u, mut ties) = (0.0f64, 0.0f64, 0.0f64);
    for (a, b) in new.iter().zip(base) {
        let (a, b) = (*a as f64, *b as f64);
        u += a * (below + b / 2.0);
        below += b;
        let t = a + b;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return if u > mean { 0.0 } else { 1.0 };
    }
    // Continuity correction.
    normal_sf((u - mean - 0.5) / var.sqrt())
}

/// Chi-square goodness of fit of `observed` counts to `expected` shares:
/// the p-value, over the categories with an expected share above zero
/// (an observation where none is expected is a p-value of 0).
pub fn chi_square_fit(observed: &[u64], expected: &[f64]) -> f64 {
    let n: u64 = observed.iter().sum();
    if n == 0 {
        return 1.0;
    }
    let (mut chi, mut df) = (0.0, 0usize);
    for (o, e) in observed.iter().zip(expected) {
        if *e <= 0.0 {
            if *o > 0 {
                return 0.0;
            }
            continue;
        }
        let e = e * n as f64;
        chi += (*o as f64 - e).powi(2) / e;
        df += 1;
    }
    if df < 2 {
        return 1.0;
    }
    chi_square_sf(chi, (df - 1) as f64)
}

/// P(X > x) for X ~ chi-square with `k` degrees of freedom, through the
/// Wilson-Hilferty cube-root normal approximation (good to a few percent
/// of the p-value where thresholds are drawn).
pub fn chi_square_sf(x: f64, k: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let t = (x / k).cbrt();
    let mean = 1.0 - 2.0 / (9.0 * k);
    let sd = (2.0 / (9.0 * k)).sqrt();
    normal_sf((t - mean) / sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_tail_and_its_quantile_agree() {
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_sf(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_sf(3.090_232) - 0.001).abs() < 1e-6);
        for p in [0.1, 0.01, 0.001, 1e-6] {
            assert!(
                (normal_sf(normal_quantile_upper(p)) - p).abs() / p < 1e-3,
                "{p}"
            );
        }
    }

    #[test]
    fn fisher_matches_the_hypergeometric_tail() {
        // One failure in 20 against none in 200: P = 20/220.
        assert!((fisher_rise(1, 20, 0, 200) - 20.0 / 220.0).abs() < 1e-9);
        assert!(fisher_rise(1, 5, 0, 200) > 0.02);
        assert!(fisher_rise(20, 20, 0, 200) < 1e-9);
        assert!(fisher_rise(0, 100, 30, 100) > 0.99);
        // Large counts agree with the z-test.
        let (f, z) = (
            fisher_rise(130, 1000, 100, 1000),
            proportion_rise(130, 1000, 100, 1000),
        );
        assert!((f - z).abs() < 0.01, "{f} {z}");
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn proportions_rise_or_not() {
        // New 20 in 20 against 0 in 200: certain.
        assert!(proportion_rise(20, 20, 0, 200) < 1e-9);
        // A zero baseline is compared, not skipped.
        assert!(proportion_rise(10, 50, 0, 50) < 0.001);
        assert_eq!(proportion_rise(3, 10, 0, 0), 1.0);
        // A fall is never a rise.
        assert!(proportion_rise(0, 100, 30, 100) > 0.99);
    }

    #[test]
    fn wilson_bounds_hold_the_rate() {
        let (lo, hi) = wilson(90, 100, 0.999);
        assert!(lo > 0.75 && lo < 0.9 && hi > 0.9, "{lo} {hi}");
        assert_eq!(wilson(0, 0, 0.999), (0.0, 1.0));
        // One in five: its lower bound is below any sane minimum effect.
        let (lo, _) = wilson(1, 5, 0.999);
        assert!(lo < 0.05, "{lo}");
    }

    #[test]
    fn mann_whitney_sees_a_shift_and_not_noise() {
        let base = [0, 10, 40, 40, 10, 0, 0, 0];
        let same = [0, 9, 41, 39, 11, 0, 0, 0];
        let slower = [0, 0, 5, 20, 40, 30, 5, 0];
        assert!(mann_whitney_greater(&same, &base) > 0.2);
        assert!(mann_whitney_greater(&slower, &base) < 1e-6);
        assert!(mann_whitney_greater(&base, &slower) > 0.99);
        assert_eq!(mann_whitney_greater(&[0; 8], &base), 1.0);
    }

    #[test]
    fn chi_square_fit_tells_skew_from_noise() {
        assert!(chi_square_fit(&[510, 490], &[0.5, 0.5]) > 0.3);
        assert!(chi_square_fit(&[900, 100], &[0.5, 0.5]) < 1e-9);
        assert!(chi_square_fit(&[45, 55], &[0.5, 0.5]) > 0.2);
        assert_eq!(chi_square_fit(&[5, 1], &[1.0, 0.0]), 0.0);
        // Against tabulated values: chi2(3) > 7.815 has p = 0.05.
        assert!((chi_square_sf(7.815, 3.0) - 0.05).abs() < 0.005);
        assert!((chi_square_sf(16.27, 3.0) - 0.001).abs() < 0.0005);
    }
}
