//! `--plot FILE`: throughput and latency over time as an SVG, drawn from the
//! report's timeline (warm-up included, marked by a grey line).

use std::path::Path;

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

fn draw(path: &Path, report: &Report) -> Result<(), Box<dyn std::error::Error>> {
    // A slice much shorter than the others (the tail) would draw a false dip.
    let full = report.timeline.iter().map(|p| p.secs).fold(0.0, f64::max);
    let points: Vec<&Point> = report
        .timeline
        .iter()
        .filter(|p| p.secs >= full * 0.5)
        .collect();
    let mid = |p: &Point| p.t_secs + p.secs / 2.0;
    let t_max = report
        .timeline
        .last()
        .map_or(1.0, |p| p.t_secs + p.secs)
        .max(1e-3);
    let warmup = report.run.warmup_secs;

    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "homecmp-loadgen: {} {} ({} connections x {} streams{})",
        report.run.protocols.join("+"),
        match report.run.rate {
            Some(rate) => format!("open loop {rate} req/s"),
            None => "closed loop".to_owned(),
        },
        report.run.connections,
        report.run.streams,
        if report.run.keepalive {
            ""
        } else {
            ", new connection per request"
        },
    );
    let root = root.titled(&title, ("sans-serif", 18))?;
    let (top, bottom) = root.split_vertically(340);

    let r_max = points.iter().map(|p| p.rps).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption("throughput", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..r_max)?;
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
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
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
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    finish_chart(&mut chart, warmup, r_max)?;

    let l_max = points.iter().map(|p| p.p99_ms).fold(0.1, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "latency (from intended send time in open loop)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..l_max)?;
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
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    finish_chart(&mut chart, warmup, l_max)?;
    root.present()?;
    Ok(())
}

type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Marks the end of the warm-up (when there was one) with a vertical line up
/// to `y_max`, then draws the legend.
fn finish_chart(
    chart: &mut Chart<'_>,
    warmup: f64,
    y_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    if warmup > 0.0 {
        chart
            .draw_series(LineSeries::new(
                [(warmup, 0.0), (warmup, y_max)],
                WARMUP.stroke_width(2),
            ))?
            .label("end of warm-up")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], WARMUP.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
