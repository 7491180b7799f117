//! The small per-KPI chart of the daily digest, drawn with `plotters` into an in-memory RGB
//! buffer and encoded as PNG. Pure: no IO (no files, no fonts).
//!
//! The chart carries no text at all, on purpose: system fonts are not guaranteed on the
//! machines that send e-mail. Its axes are labelled by the HTML around the image: values at
//! the bottom, middle and top grid lines ([`y_range`]), dates under the first, middle and
//! last points. It shows the
//! expected band (shaded), the expected line (dashed grey), the actual line (blue) and anomalies
//! (red dots), with the last point (the digest's day) highlighted. Missing values (`None`, NaN,
//! infinities) break the lines into segments; an isolated point is drawn as a dot.

use plotters::backend::BitMapBackend;
use plotters::chart::ChartBuilder;
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::{Circle, DashedPathElement, PathElement, Polygon, Rectangle};
use plotters::style::{Color, RGBColor, ShapeStyle, WHITE};

use super::data::{ChartPoint, KpiDigest};
use crate::reading::known;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size is zero or too large for an inline e-mail image.
    #[error("invalid chart size {width}x{height}: expected 1..={MAX_SIDE} pixels per side")]
    InvalidSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// `plotters` failed while drawing (the message is the backend's).
    #[error("failed to draw the chart: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("failed to encode the chart as PNG")]
    Encode(#[from] png::EncodingError),
}

/// Result alias for this module.
type Result<T, E = Error> = std::result::Result<T, E>;

/// Largest accepted side in pixels (an e-mail chart, not a poster).
const MAX_SIDE: u32 = 4096;

const BAND: RGBColor = RGBColor(191, 219, 254);
const EXPECTED: RGBColor = RGBColor(107, 114, 128);
const ACTUAL: RGBColor = RGBColor(29, 78, 216);
const ANOMALY: RGBColor = RGBColor(220, 38, 38);
const GRID: RGBColor = RGBColor(229, 231, 235);
const TODAY: RGBColor = RGBColor(243, 244, 246);

/// Draws `kpi.points` as a PNG of `width` x `height` pixels.
///
/// Never panics on odd data: empty, flat, single-point, gappy or NaN series give a valid
/// (possibly empty-looking) chart.
pub fn chart_png(kpi: &KpiDigest, width: u32, height: u32) -> Result<Vec<u8>> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::InvalidSize { width, height });
    }
    let len = usize::try_from(u64::from(width) * u64::from(height) * 3)
        .map_err(|_| Error::InvalidSize { width, height })?;
    let mut rgb = vec![0u8; len];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root, kpi, width, height).map_err(|e| Error::Draw(e.to_string()))?;
        root.present().map_err(|e| Error::Draw(e.to_string()))?;
    }
    encode_png(&rgb, width, height)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(root: &DrawingArea<BitMapBackend<'_>, Shift>, kpi: &KpiDigest, w: u32, h: u32) -> DrawResult {
    let points = &kpi.points;
    root.fill(&WHITE)?;
    // Line widths scale with the image so a 2x (retina) render looks like the 1x one.
    let scale = (f64::from(w.min(h * 4)) / 560.0).max(0.5);
    let px = |v: f64| -> u32 { (v * scale).round().max(1.0) as u32 };

    let n = points.len();
    let (x_lo, x_hi) = if n <= 1 {
        (-1.0, 1.0)
    } else {
        (-0.5, n as f64 - 0.5)
    };
    let (y_lo, y_hi) = axis_range(kpi);
    let margin = px(6.0).min(w / 4).min(h / 4);
    let mut chart = ChartBuilder::on(root)
        .margin(margin)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;

    // The digest's day (the last point): a faint column behind everything.
    if n > 1 {
        let last = (n - 1) as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(last - 0.5, y_lo), (last + 0.5, y_hi)],
            TODAY.filled(),
        )))?;
    }

    // Faint horizontal grid lines at the bottom, middle and top: the HTML beside the image
    // labels them with their values (the PNG carries no text: no fonts needed).
    chart.draw_series((0..=2).map(|i| {
        let y = y_lo + (y_hi - y_lo) * f64::from(i) / 2.0;
        PathElement::new(
            vec![(x_lo, y), (x_hi, y)],
            ShapeStyle::from(GRID).stroke_width(px(1.0)),
        )
    }))?;

    // The expected band, one polygon per run of points that have both edges.
    let band_runs = runs(points, |p| {
        Some((known(p.reading.band.lower)?, known(p.reading.band.upper)?))
    });
    for run in &band_runs {
        if run.len() == 1 {
            let (x, (lo, hi)) = run[0];
            let style = ShapeStyle::from(BAND).stroke_width(px(6.0));
            chart.draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], style)))?;
            continue;
        }
        let mut outline: Vec<(f64, f64)> = run.iter().map(|&(x, (_, hi))| (x, hi)).collect();
        outline.extend(run.iter().rev().map(|&(x, (lo, _))| (x, lo)));
        chart.draw_series(std::iter::once(Polygon::new(outline, BAND.filled())))?;
    }

    // The expected line, dashed.
    for run in runs(points, |p| known(p.reading.band.expected)) {
        let style = ShapeStyle::from(EXPECTED).stroke_width(px(1.5));
        chart.draw_series(std::iter::once(DashedPathElement::new(
            run,
            px(5.0),
            px(4.0),
            style,
        )))?;
    }

    // The actual line; isolated points become dots so they do not vanish.
    for run in runs(points, |p| known(p.reading.value)) {
        if run.len() == 1 {
            chart.draw_series(std::iter::once(Circle::new(run[0], px(3.0), ACTUAL.filled())))?;
        } else {
            let style = ShapeStyle::from(ACTUAL).stroke_width(px(2.5));
            chart.draw_series(std::iter::once(PathElement::new(run, style)))?;
        }
    }

    // Anomalies on top: a white halo, then a red dot.
    let anomalies: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.anomaly)
        .filter_map(|(i, p)| Some((x_of(i, n), known(p.reading.value)?)))
        .collect();
    chart.draw_series(anomalies.iter().map(|&c| Circle::new(c, px(6.0), WHITE.filled())))?;
    chart.draw_series(
        anomalies
            .iter()
            .map(|&c| Circle::new(c, px(4.5), ANOMALY.filled())),
    )?;
    Ok(())
}

/// The x position of point `i` of `n`: its index (a single point sits in the middle).
fn x_of(i: usize, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        i as f64
    }
}

/// Maximal runs of consecutive points for which `get` returns a value, as `(x, value)`.
fn runs<T: Copy>(points: &[ChartPoint], get: impl Fn(&ChartPoint) -> Option<T>) -> Vec<Vec<(f64, T)>> {
    let n = points.len();
    let mut out: Vec<Vec<(f64, T)>> = Vec::new();
    let mut current = Vec::new();
    for (i, p) in points.iter().enumerate() {
        match get(p) {
            Some(v) => current.push((x_of(i, n), v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The value axis of a KPI's chart: [`y_range`], kept within what the KPI can be (not below
/// 0 when nothing is negative; not above 100% for a ratio), so its labels never read `-503`
/// orders or `103.74%`. The digest labels the axis with these bounds.
pub(super) fn axis_range(kpi: &KpiDigest) -> (f64, f64) {
    let (mut lo, mut hi) = y_range(&kpi.points);
    let finite: Vec<f64> = kpi
        .points
        .iter()
        .flat_map(|p| {
            [
                p.reading.value,
                p.reading.band.expected,
                p.reading.band.lower,
                p.reading.band.upper,
            ]
        })
        .filter_map(known)
        .collect();
    if finite.iter().all(|v| *v >= 0.0) {
        lo = lo.max(0.0);
    }
    if kpi.kind == crate::kpi::Kind::Ratio && finite.iter().all(|v| *v <= 1.0) {
        hi = hi.min(1.0);
    }
    if hi > lo {
        (lo, hi)
    } else {
        y_range(&kpi.points)
    }
}

/// The y range covering every finite value, padded; never empty or inverted.
fn y_range(points: &[ChartPoint]) -> (f64, f64) {
    let values = points
        .iter()
        .flat_map(|p| {
            [
                p.reading.value,
                p.reading.band.expected,
                p.reading.band.lower,
                p.reading.band.upper,
            ]
        })
        .filter_map(known);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > f64::EPSILON * hi.abs().max(1.0) {
        span * 0.12
    } else {
        // Flat series: centre it with a band of ±10% (or ±1 around zero).
        (hi.abs() * 0.1).max(1.0)
    };
    let (lo, hi) = (lo - pad, hi + pad);
    if lo.is_finite() && hi.is_finite() && hi > lo {
        (lo, hi)
    } else {
        // Values near f64::MAX overflow the padding; fall back to something drawable.
        (-1.0, 1.0)
    }
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::super::data::DigestStatus;
    use super::*;
    use crate::kpi::Kind;
    use crate::reading::{Band, Reading};

    fn point(day: i64, value: Option<f64>, expected: f64, anomaly: bool) -> ChartPoint {
        ChartPoint {
            ts: Utc.with_ymd_and_hms(2026, 11, 10, 0, 0, 0).unwrap() + Duration::days(day),
            reading: Reading::new(
                value.unwrap_or(f64::NAN),
                Band::new(expected, expected * 0.9, expected * 1.1),
            ),
            anomaly,
        }
    }

    fn kpi(points: Vec<ChartPoint>) -> KpiDigest {
        KpiDigest {
            id: "orders".into(),
            title: "Orders".into(),
            kind: Kind::Count,
            unit: None,
            owner: None,
            status: DigestStatus::Ok,
            value: None,
            expected: None,
            last_week: None,
            impact: 0.0,
            points,
            incidents: vec![],
            near_misses: vec![],
            data_health: None,
            note: None,
            events: vec![],
            url: String::new(),
        }
    }

    fn typical(anomaly_at: Option<i64>) -> KpiDigest {
        kpi((0..14)
            .map(|d| {
                let expected = 1000.0 + 100.0 * ((d as f64) * 0.9).sin();
                let hit = anomaly_at == Some(d);
                let value = if hit { expected * 0.6 } else { expected * 1.02 };
                point(d, Some(value), expected, hit)
            })
            .collect())
    }

    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(png_bytes);
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn red_pixels(rgb: &[u8]) -> usize {
        rgb.chunks_exact(3)
            .filter(|p| p[0] > 180 && p[1] < 90 && p[2] < 90)
            .count()
    }

    #[test]
    fn the_chart_is_a_png_of_the_requested_size() {
        let png_bytes = chart_png(&typical(None), 320, 90).unwrap();
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h, _) = decode(&png_bytes);
        assert_eq!((w, h), (320, 90));
    }

    #[test]
    fn the_chart_is_not_blank() {
        let (_, _, rgb) = decode(&chart_png(&typical(None), 320, 90).unwrap());
        let lum: Vec<f64> = rgb
            .chunks_exact(3)
            .map(|p| f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2]))
            .collect();
        let mean = lum.iter().sum::<f64>() / lum.len() as f64;
        let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
        assert!(var > 100.0, "variance {var}");
        let blue = rgb.chunks_exact(3).filter(|p| p[2] > 150 && p[0] < 80).count();
        assert!(blue > 50, "the actual line is drawn ({blue} blue pixels)");
    }

    #[test]
    fn anomalies_are_drawn_in_red_and_only_when_there_is_one() {
        let (_, _, with) = decode(&chart_png(&typical(Some(12)), 320, 90).unwrap());
        let (_, _, without) = decode(&chart_png(&typical(None), 320, 90).unwrap());
        assert!(red_pixels(&with) > 20, "{} red pixels", red_pixels(&with));
        assert_eq!(red_pixels(&without), 0);
    }

    #[test]
    fn odd_series_give_a_png_without_panicking() {
        let mut gappy = typical(Some(3)).points;
        gappy[2].reading.value = f64::NAN;
        gappy[5].reading.band.lower = f64::NAN;
        gappy[6].reading.band.expected = f64::NAN;
        gappy[7].reading.value = f64::INFINITY;
        gappy[9].reading.value = f64::NAN;
        gappy[11].reading.value = f64::NAN;
        let cases = vec![
            vec![],
            vec![point(0, Some(5.0), 5.0, true)],
            vec![point(0, None, 5.0, false)],
            (0..7).map(|d| point(d, Some(0.0), 0.0, false)).collect(),
            (0..7).map(|d| point(d, Some(42.0), 42.0, d == 3)).collect(),
            (0..7).map(|d| point(d, Some(f64::NAN), f64::NAN, true)).collect(),
            (0..3)
                .map(|d| point(d, Some(f64::MAX), f64::MAX, false))
                .collect(),
            (0..3).map(|d| point(d, Some(-1e300), 1e300, false)).collect(),
            gappy,
        ];
        for (i, points) in cases.into_iter().enumerate() {
            let png_bytes = chart_png(&kpi(points), 120, 40).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let (w, h, _) = decode(&png_bytes);
            assert_eq!((w, h), (120, 40), "case {i}");
        }
        for (w, h) in [(1, 1), (2, 300), (300, 2)] {
            assert!(chart_png(&typical(Some(1)), w, h).is_ok(), "{w}x{h}");
        }
    }

    #[test]
    fn a_zero_or_huge_size_is_an_error() {
        assert!(matches!(
            chart_png(&typical(None), 0, 10),
            Err(Error::InvalidSize { .. })
        ));
        assert!(matches!(
            chart_png(&typical(None), 10, MAX_SIDE + 1),
            Err(Error::InvalidSize { .. })
        ));
    }
}
