//! The bench's charts, as SVG: throughput per variant on a log axis with TALOS-V2's line,
//! tokens per joule, the shape sweep (tok/s against MACs per token), and per-token latency
//! against percentile.

use plotters::coord::Shift;
use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{AsRangedCoord, SegmentValue};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One bar: a variant and its value.
#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Bars of a group share a colour (e.g. the backend).
    pub group: String,
}

/// One point of the sweep.
#[derive(Clone, Debug)]
pub struct Point {
    pub series: String,
    pub macs: f64,
    pub tok_per_s: f64,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The backends this project has, so that a backend keeps its colour from chart to chart.
const KNOWN_GROUPS: [&str; 7] = [
    "proc-macro",
    "cranelift",
    "scalar",
    "emulator",
    "fpga",
    "candle",
    "cuda",
];

/// A bar group's colour: fixed for the known backends, else by order of appearance.
fn colour(groups: &[String], group: &str) -> RGBColor {
    let i = KNOWN_GROUPS
        .iter()
        .position(|k| group.starts_with(k))
        .unwrap_or_else(|| KNOWN_GROUPS.len() + groups.iter().position(|g| g == group).unwrap_or(0));
    PALETTE[i % PALETTE.len()]
}

/// A line series' colour: by order of appearance.
fn series_colour(series: &[String], name: &str) -> RGBColor {
    PALETTE[series.iter().position(|s| s == name).unwrap_or(0) % PALETTE.len()]
}

fn groups_of<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for g in names {
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    groups
}

/// 1e6 → "1M", 3e4 → "30K".
fn short(v: f64) -> String {
    let (x, unit) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "K"),
        v => (v, ""),
    };
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}{unit}")
    } else {
        format!("{x:.1}{unit}")
    }
}

/// Powers of ten around `[lo, hi]`.
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    (
        10f64.powf(lo.max(1e-9).log10().floor()),
        10f64.powf(hi.max(1e-9).log10().ceil()),
    )
}

type Err = Box<dyn std::error::Error>;

/// A chart on an SVG drawing area, with a log y axis.
type LogYChart<'a, 'b, X> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, LogCoord<f64>>>;

/// A line chart's frame on a white `root`: the title, the margins, `x` and a log y axis over
/// `y0..y1`.
fn line_chart<'a, 'b, X: AsRangedCoord<Value = f64>>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    x: X,
    (y0, y1): (f64, f64),
) -> Result<LogYChart<'a, 'b, X::CoordDescType>, Err> {
    root.fill(&WHITE)?;
    Ok(ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .margin_right(30)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, (y0..y1).log_scale())?)
}

/// Every chart's legend: the series' labels in a framed box at `at`.
fn legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    at: SeriesLabelPosition,
) -> Result<(), Err> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// Horizontal bars on a log axis, largest at the top; `line` draws a labelled vertical rule.
pub fn bars(
    path: &Path,
    title: &str,
    axis: &str,
    bars: &[Bar],
    line: Option<(f64, &str)>,
) -> Result<(), Err> {
    if bars.is_empty() {
        return Err("nothing to chart".into());
    }
    let mut sorted = bars.to_vec();
    sorted.sort_by(|a, b| a.value.total_cmp(&b.value));
    let n = sorted.len();
    let lo = sorted
        .iter()
        .map(|b| b.value)
        .fold(f64::INFINITY, f64::min)
        .min(line.map_or(f64::INFINITY, |l| l.0));
    let hi = sorted
        .iter()
        .map(|b| b.value)
        .fold(0.0, f64::max)
        .max(line.map_or(0.0, |l| l.0));
    let (x0, x1) = decades(lo, hi);
    // With a rule, one more row than bars: the top one holds its label, clear of every bar.
    let rows = n + usize::from(line.is_some());
    let height = 120 + 26 * rows as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let longest = sorted.iter().map(|b| b.label.chars().count()).max().unwrap_or(8) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .margin_right(40)
        .x_label_area_size(44)
        .y_label_area_size(30 + 7 * longest)
        .build_cartesian_2d((x0..x1).log_scale(), (0..rows as i32 - 1).into_segmented())?;
    let labels: Vec<String> = sorted.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|v| short(*v))
        .x_desc(axis)
        .label_style(("sans-serif", 13))
        .draw()?;
    let groups = groups_of(sorted.iter().map(|b| &b.group));
    for g in &groups {
        let c = colour(&groups, g);
        chart
            .draw_series(
                sorted
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| &b.group == g)
                    .map(|(i, b)| {
                        let i = i as i32;
                        let mut r = Rectangle::new(
                            [
                                (x0, SegmentValue::Exact(i)),
                                (b.value, SegmentValue::Exact(i + 1)),
                            ],
                            c.filled(),
                        );
                        r.set_margin(3, 3, 0, 0);
                        r
                    }),
            )?
            .label(g.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart.draw_series(sorted.iter().enumerate().map(|(i, b)| {
        Text::new(
            short(b.value),
            (b.value * 1.08, SegmentValue::CenterOf(i as i32)),
            TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    if let Some((x, label)) = line {
        let red = RGBColor(200, 0, 0);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (x, SegmentValue::Exact(0)),
                (x, SegmentValue::Exact(n as i32 + 1)),
            ],
            red.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            label.to_string(),
            (x * 1.1, SegmentValue::CenterOf(n as i32)),
            TextStyle::from(("sans-serif", 13).into_font())
                .color(&red)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        )))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Tok/s against MACs per token, log-log, one line per series.
pub fn sweep(path: &Path, title: &str, points: &[Point]) -> Result<(), Err> {
    if points.is_empty() {
        return Err("nothing to chart".into());
    }
    let (mx0, mx1) = decades(
        points.iter().map(|p| p.macs).fold(f64::INFINITY, f64::min),
        points.iter().map(|p| p.macs).fold(0.0, f64::max),
    );
    let (y0, y1) = decades(
        points.iter().map(|p| p.tok_per_s).fold(f64::INFINITY, f64::min),
        points.iter().map(|p| p.tok_per_s).fold(0.0, f64::max),
    );
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    let mut chart = line_chart(&root, title, (mx0..mx1).log_scale(), (y0, y1))?;
    chart
        .configure_mesh()
        .x_desc("weight MACs per token (log)")
        .y_desc("tokens / s (log)")
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 13))
        .draw()?;
    let series = groups_of(points.iter().map(|p| &p.series));
    for s in &series {
        let c = series_colour(&series, s);
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| &p.series == s)
            .map(|p| (p.macs, p.tok_per_s))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(s.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// One row's latency distribution: (quantile, ns) points in increasing quantile.
#[derive(Clone, Debug)]
pub struct Percentiles {
    pub series: String,
    pub points: Vec<(f64, f64)>,
}

/// "Nines" of a quantile: 0.9 → 1, 0.99 → 2, 0.999 → 3.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-9).log10()
}

/// Latency against percentile: x in nines (50, 90, 99, 99.9, …), y in ns on a log axis; a flat
/// line is a deterministic latency.
pub fn latency(path: &Path, title: &str, rows: &[Percentiles]) -> Result<(), Err> {
    let all = || rows.iter().flat_map(|r| r.points.iter().copied());
    if all().next().is_none() {
        return Err("nothing to chart".into());
    }
    // Whole nines, not one more for a rounding error (1 − 10⁻⁵ is 5.000000001 nines).
    let x1 = (all().map(|(q, _)| nines(q)).fold(1.0, f64::max) - 1e-6).ceil();
    let (y0, y1) = decades(
        all().map(|p| p.1).fold(f64::INFINITY, f64::min),
        all().map(|p| p.1).fold(0.0, f64::max),
    );
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    let mut chart = line_chart(&root, title, 0f64..x1, (y0, y1))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency per token, ns (log)")
        .x_labels(x1 as usize + 1)
        .x_label_formatter(&|v| {
            let p = 100.0 * (1.0 - 10f64.powf(-v));
            format!("{}", (p * 1e4).round() / 1e4)
        })
        .y_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 13))
        .draw()?;
    let names: Vec<String> = rows.iter().map(|r| r.series.clone()).collect();
    for r in rows {
        let c = series_colour(&names, &r.series);
        let pts: Vec<(f64, f64)> = r.points.iter().map(|&(q, ns)| (nines(q), ns)).collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(r.series.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short(53_000.0), "53K");
        assert_eq!(short(1e6), "1M");
        assert_eq!(short(2.5e7), "25M");
        assert_eq!(short(1.25e9), "1.2G");
        assert_eq!(decades(53_000.0, 3.1e7), (1e4, 1e8));
    }

    #[test]
    fn charts_are_svg_with_every_label() {
        let dir = std::env::temp_dir().join(format!("microgpt-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = [
            ("reference", 8e5, "scalar"),
            ("avx512-f32-x16-2t", 3e7, "proc-macro"),
            ("talos", 1e6, "emulator"),
        ];
        let b: Vec<Bar> = data
            .iter()
            .map(|&(l, v, g)| Bar {
                label: l.into(),
                value: v,
                group: g.into(),
            })
            .collect();
        let path = dir.join("t.svg");
        bars(
            &path,
            "Throughput",
            "tokens / s",
            &b,
            Some((53_000.0, "TALOS-V2 53K")),
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for (l, _, g) in data {
            assert!(svg.contains(l) && svg.contains(g), "{l}");
        }
        assert!(svg.contains("TALOS-V2 53K"));
        let p = [Point {
            series: "cranelift-f32".into(),
            macs: 3504.0,
            tok_per_s: 3e6,
        }];
        sweep(&dir.join("s.svg"), "Sweep", &p).unwrap();
        let l = [Percentiles {
            series: "avx512-f32-table".into(),
            points: vec![(0.0, 120.0), (0.5, 140.0), (0.99, 300.0), (0.999, 2000.0)],
        }];
        latency(&dir.join("l.svg"), "Latency", &l).unwrap();
        let svg = std::fs::read_to_string(dir.join("l.svg")).unwrap();
        assert!(svg.contains("avx512-f32-table") && svg.contains("99.9"), "{svg}");
        assert!(latency(&path, "x", &[]).is_err());
        assert!(bars(&path, "x", "y", &[], None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
