//! Per-run plots: operation latency and throughput over time, with fault windows shaded.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::history::{Event, Kind, Op};
use crate::nemesis::{Fault, FaultKind};

/// A completed operation: when it started, how long it took, what and how it ended.
#[derive(Debug, Clone)]
pub struct Timed {
    pub start_s: f64,
    pub latency_ms: f64,
    pub f: &'static str,
    pub kind: Kind,
}

/// Pairs invocations with completions (nemesis events left out).
pub fn timings(history: &[Event]) -> Vec<Timed> {
    let mut open: BTreeMap<u64, (u64, &'static str)> = BTreeMap::new();
    let mut out = Vec::new();
    for e in history {
        let f = match e.op {
            Op::Send { .. } => "send",
            Op::Poll { .. } => "poll",
            Op::Assign { .. } | Op::Nemesis { .. } => continue,
        };
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, (e.time_ns, f));
            }
            kind => {
                if let Some((t0, f)) = open.remove(&e.process) {
                    out.push(Timed {
                        start_s: t0 as f64 / 1e9,
                        latency_ms: (e.time_ns.saturating_sub(t0)) as f64 / 1e6,
                        f,
                        kind,
                    });
                }
            }
        }
    }
    out
}

fn fault_color(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::Kill => RGBColor(220, 50, 47),
        FaultKind::Pause => RGBColor(181, 137, 0),
        FaultKind::Partition => RGBColor(38, 139, 210),
        FaultKind::Clock => RGBColor(133, 153, 0),
        FaultKind::Reshard => RGBColor(108, 113, 196),
        FaultKind::PowerLoss => RGBColor(211, 54, 130),
        FaultKind::Net => RGBColor(42, 161, 152),
        FaultKind::Corrupt => RGBColor(88, 110, 117),
        FaultKind::Membership => RGBColor(203, 75, 22),
    }
}

fn kind_color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Ok => RGBColor(30, 120, 60),
        Kind::Fail => RGBColor(200, 40, 40),
        _ => RGBColor(230, 150, 0),
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Shades each fault window over the chart's full height and names the kinds in the legend.
fn shade<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    faults: &[Fault],
    y: (f64, f64),
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let mut named = std::collections::BTreeSet::new();
    for f in faults {
        let color = fault_color(f.kind);
        let series = chart.draw_series(std::iter::once(Rectangle::new(
            [(f.start_s, y.0), (f.end_s, y.1)],
            color.mix(0.15).filled(),
        )))?;
        if named.insert(f.kind) {
            series
                .label(format!("{:?}", f.kind).to_lowercase())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.4).filled())
                });
        }
    }
    Ok(())
}

/// Latency of every operation (log scale), coloured by outcome, over time.
pub fn latency_plot(path: &Path, ops: &[Timed], faults: &[Fault], duration_s: f64) -> PlotResult {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = ops.iter().map(|o| o.latency_ms).fold(10.0f64, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("operation latency (ms, log scale)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration_s.max(1.0), (0.1f64..max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency ms")
        .draw()?;
    shade(&mut chart, faults, (0.1, max))?;
    for (f, marker) in [("send", 0), ("poll", 1)] {
        for kind in [Kind::Ok, Kind::Fail, Kind::Info] {
            let color = kind_color(kind);
            let points: Vec<(f64, f64)> = ops
                .iter()
                .filter(|o| o.f == f && o.kind == kind)
                .map(|o| (o.start_s, o.latency_ms.max(0.1)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let label = format!("{f} {}", format!("{kind:?}").to_lowercase());
            if marker == 0 {
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 2, color.filled())))?
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x + 6, y), 3, color.filled()));
            } else {
                chart
                    .draw_series(points.iter().map(|p| Cross::new(*p, 2, color)))?
                    .label(label)
                    .legend(move |(x, y)| Cross::new((x + 6, y), 3, color));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Completed operations per second, by function and outcome.
pub fn throughput_plot(
    path: &Path,
    ops: &[Timed],
    faults: &[Fault],
    duration_s: f64,
) -> PlotResult {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = duration_s.ceil().max(1.0) as usize;
    let mut series: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    for o in ops {
        let done = o.start_s + o.latency_ms / 1000.0;
        let bucket = (done as usize).min(seconds - 1);
        let outcome = if o.kind == Kind::Ok { "ok" } else { "not ok" };
        series
            .entry((o.f, outcome.to_string()))
            .or_insert_with(|| vec![0.0; seconds])[bucket] += 1.0;
    }
    let max = series.values().flatten().fold(1.0f64, |a, b| a.max(*b)) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "throughput (operations completed per second)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration_s.max(1.0), 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("ops/s")
        .draw()?;
    shade(&mut chart, faults, (0.0, max))?;
    for ((f, outcome), counts) in &series {
        let color = match (*f, outcome.as_str()) {
            ("send", "ok") => RGBColor(40, 80, 200),
            ("poll", "ok") => RGBColor(30, 120, 60),
            ("send", _) => RGBColor(200, 40, 40),
            _ => RGBColor(230, 150, 0),
        };
        chart
            .draw_series(LineSeries::new(
                counts.iter().enumerate().map(|(s, c)| (s as f64 + 0.5, *c)),
                color.stroke_width(2),
            ))?
            .label(format!("{f} {outcome}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
