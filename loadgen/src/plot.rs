//! `--plot FILE`: throughput and latency over time as an SVG, drawn from the
//! report's timeline (warm-up included, marked by a grey line).

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::Error;
use crate::report::{Point, Report};

const WARMUP: RGBColor = RGBColor(140, 140, 140);
const PROTOCOL_COLORS: [RGBColor; 3] = [
    RGBColor(230, 140, 0),
    RGBColor(0, 150, 60),
    RGBColor(150, 0, 150),
];

pub fn write_svg(path: &Path, report: &Report) -> Result<(), Error> {
    draw(path, report).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The title, then throughput above latency, over the same time axis.
fn draw(path: &Path, report: &Report) -> DrawResult {
    let points = drawn_points(report);
    let t_max = report
        .timeline
        .last()
        .map_or(1.0, |p| p.t_secs + p.secs)
        .max(1e-3);
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&title(report), ("sans-serif", 18))?;
    let (top, bottom) = root.split_vertically(340);
    draw_throughput(&top, report, &points, t_max)?;
    draw_latency(&bottom, report, &points, t_max)?;
    root.present()?;
    Ok(())
}

/// The timeline's slices but a short tail: a slice much shorter than the
/// others would draw a false dip.
fn drawn_points(report: &Report) -> Vec<&Point> {
    let full = report.timeline.iter().map(|p| p.secs).fold(0.0, f64::max);
    report
        .timeline
        .iter()
        .filter(|p| p.secs >= full * 0.5)
        .collect()
}

/// Where a point is drawn: the middle of its slice.
fn mid(p: &Point) -> f64 {
    p.t_secs + p.secs / 2.0
}

fn title(report: &Report) -> String {
    let run = &report.run;
    format!(
        "homecmp-loadgen: {} {} ({} connections x {} streams{})",
        run.protocols.join("+"),
        match run.rate {
            Some(rate) => format!("open loop {rate} req/s"),
            None => "closed loop".to_owned(),
        },
        run.connections,
        run.streams,
        if run.keepalive {
            ""
        } else {
            ", new connection per request"
        },
    )
}

/// Answers per second, in all and, with several protocols, per protocol.
fn draw_throughput(area: &Area<'_>, report: &Report, points: &[&Point], t_max: f64) -> DrawResult {
    let r_max = points.iter().map(|p| p.rps).fold(1.0, f64::max) * 1.15;
    let mut chart = new_chart(area, "throughput", t_max, r_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("answers / s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (mid(p), p.rps)),
            BLUE.stroke_width(2),
        ))?
        .label("all")
        .legend(legend_line(BLUE.stroke_width(2)));
    if report.run.protocols.len() > 1 {
        for (i, protocol) in report.run.protocols.iter().enumerate() {
            let color = PROTOCOL_COLORS[i % PROTOCOL_COLORS.len()];
            let series = points.iter().map(|p| {
                (
                    mid(p),
                    p.rps_by_protocol.get(protocol).copied().unwrap_or(0.0),
                )
            });
            chart
                .draw_series(LineSeries::new(series, &color))?
                .label(*protocol)
                .legend(legend_line(color.into()));
        }
    }
    finish_chart(&mut chart, report.run.warmup_secs, r_max)
}

/// p50 and p99 latency per slice.
fn draw_latency(area: &Area<'_>, report: &Report, points: &[&Point], t_max: f64) -> DrawResult {
    let l_max = points.iter().map(|p| p.p99_ms).fold(0.1, f64::max) * 1.15;
    let caption = "latency (from intended send time in open loop)";
    let mut chart = new_chart(area, caption, t_max, l_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("milliseconds")
        .draw()?;
    let p50: Vec<(f64, f64)> = points.iter().map(|p| (mid(p), p.p50_ms)).collect();
    let p99: Vec<(f64, f64)> = points.iter().map(|p| (mid(p), p.p99_ms)).collect();
    for (name, color, series) in [("p50", BLUE, p50), ("p99", RED, p99)] {
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))?
            .label(name)
            .legend(legend_line(color.stroke_width(2)));
    }
    finish_chart(&mut chart, report.run.warmup_secs, l_max)
}

/// A chart on `area` from 0 to `t_max` seconds and 0 to `y_max`.
fn new_chart<'a>(
    area: &Area<'a>,
    caption: &str,
    t_max: f64,
    y_max: f64,
) -> Result<Chart<'a>, Box<dyn std::error::Error>> {
    Ok(ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?)
}

/// A legend's sample: a short line in the series' style.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// Marks the end of the warm-up (when there was one) with a vertical line up
/// to `y_max`, then draws the legend.
fn finish_chart(chart: &mut Chart<'_>, warmup: f64, y_max: f64) -> DrawResult {
    if warmup > 0.0 {
        chart
            .draw_series(LineSeries::new(
                [(warmup, 0.0), (warmup, y_max)],
                WARMUP.stroke_width(2),
            ))?
            .label("end of warm-up")
            .legend(legend_line(WARMUP.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
