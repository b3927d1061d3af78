//! Figures of the reports: percentiles, means, rounding, PASS/FAIL marks, sums of Prometheus
//! samples, and the JSON report file.

use serde_json::Value;
use std::path::Path;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Rounds to `digits` decimals (for the JSON report).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// `PASS` or `FAIL` for a figure against its target.
pub fn mark(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Sum of a Prometheus sample family, over the series whose labels contain `label` (all when
/// empty). `name` is the full sample name (`..._sum`, `..._count`, `..._total`).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.is_empty() || l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Prints the report and writes it to `out`.
pub fn write_report(out: &Path, report: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, text)?;
    println!("written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_pick_the_family_and_label() {
        let text = "# HELP x\nx_sum{route=\"authorize\"} 1.5\nx_sum{route=\"capture\"} 2\nx_sum_other 9\nx_count 3\n";
        assert!((metric_sum(text, "x_sum", "") - 3.5).abs() < 1e-9);
        assert!((metric_sum(text, "x_sum", "route=\"capture\"") - 2.0).abs() < 1e-9);
        assert!((metric_sum(text, "x_count", "") - 3.0).abs() < 1e-9);
    }
}
