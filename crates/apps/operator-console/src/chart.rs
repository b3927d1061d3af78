//! Charts drawn on the server as SVG shapes (no script, no chart library): stacked bars of
//! counts per time bucket, and a line of a latency over the same buckets.

/// The drawing area, in SVG user units.
pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 160.0;

/// One bucket's values, stacked bottom-up in the order of the chart's series.
pub struct Column {
    pub label: String,
    pub values: Vec<u64>,
}

pub struct Rect {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    /// The series' CSS class.
    pub class: &'static str,
    pub title: String,
}

pub struct BarChart {
    pub title: String,
    pub rects: Vec<Rect>,
    /// The tallest column's total, shown on the axis.
    pub max: u64,
    pub legend: Vec<(&'static str, &'static str)>,
    pub first: String,
    pub last: String,
    /// A short text for screen readers.
    pub summary: String,
}

fn f(v: f64) -> String {
    format!("{v:.1}")
}

/// Stacked bars: `series` names each value of a column with its CSS class.
pub fn bars(title: &str, series: &[(&'static str, &'static str)], columns: &[Column]) -> BarChart {
    let max = columns
        .iter()
        .map(|c| c.values.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let scale = if max == 0 { 0.0 } else { HEIGHT / max as f64 };
    #[allow(clippy::cast_precision_loss)]
    let width = WIDTH / columns.len().max(1) as f64;
    let mut rects = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let mut base = HEIGHT;
        for (value, (name, class)) in c.values.iter().zip(series) {
            if *value == 0 {
                continue;
            }
            #[allow(clippy::cast_precision_loss)]
            let h = *value as f64 * scale;
            base -= h;
            #[allow(clippy::cast_precision_loss)]
            rects.push(Rect {
                x: f(i as f64 * width + 0.5),
                y: f(base),
                w: f((width - 1.0).max(0.5)),
                h: f(h),
                class,
                title: format!("{}: {value} {name}", c.label),
            });
        }
    }
    let totals: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(k, (name, _))| {
            let sum: u64 = columns
                .iter()
                .map(|c| c.values.get(k).copied().unwrap_or(0))
                .sum();
            format!("{sum} {name}")
        })
        .collect();
    BarChart {
        title: title.to_owned(),
        rects,
        max,
        legend: series.to_vec(),
        first: columns.first().map(|c| c.label.clone()).unwrap_or_default(),
        last: columns.last().map(|c| c.label.clone()).unwrap_or_default(),
        summary: format!("{title}: {}", totals.join(", ")),
    }
}

pub struct LineChart {
    pub title: String,
    /// `x,y x,y ...` of the polyline; empty without any value.
    pub points: String,
    pub max: String,
    pub summary: String,
}

/// A line through the buckets that have a value (gaps are skipped).
pub fn line(title: &str, unit: &str, values: &[Option<f64>]) -> LineChart {
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    #[allow(clippy::cast_precision_loss)]
    let step = WIDTH / values.len().max(1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = (*v)?;
            let y = if max > 0.0 {
                HEIGHT - v / max * HEIGHT
            } else {
                HEIGHT
            };
            #[allow(clippy::cast_precision_loss)]
            Some(format!("{},{}", f(i as f64 * step + step / 2.0), f(y)))
        })
        .collect();
    LineChart {
        title: title.to_owned(),
        points: points.join(" "),
        max: format!("{max:.0} {unit}"),
        summary: format!("{title}: highest {max:.0} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_to_the_tallest_column_and_skip_zeros() {
        let series = [("ok", "ok"), ("failed", "bad")];
        let columns = vec![
            Column {
                label: "10:00".into(),
                values: vec![3, 1],
            },
            Column {
                label: "10:05".into(),
                values: vec![0, 0],
            },
            Column {
                label: "10:10".into(),
                values: vec![2, 0],
            },
        ];
        let c = bars("Attempts", &series, &columns);
        assert_eq!(c.max, 4);
        assert_eq!(c.rects.len(), 3, "zeros draw nothing");
        assert_eq!((c.rects[0].y.as_str(), c.rects[0].h.as_str()), ("40.0", "120.0"));
        assert_eq!(
            (c.rects[1].y.as_str(), c.rects[1].h.as_str()),
            ("0.0", "40.0"),
            "stacked on top"
        );
        assert_eq!(c.rects[1].class, "bad");
        assert_eq!(c.summary, "Attempts: 5 ok, 1 failed");
        assert_eq!((c.first.as_str(), c.last.as_str()), ("10:00", "10:10"));
    }

    #[test]
    fn a_line_skips_the_buckets_without_a_value() {
        let l = line("p99", "ms", &[Some(10.0), None, Some(20.0), None]);
        assert_eq!(l.points, "90.0,80.0 450.0,0.0");
        assert_eq!(l.max, "20 ms");
        assert_eq!(line("p99", "ms", &[None, None]).points, "");
    }
}
