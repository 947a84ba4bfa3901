//! Line charts as inline SVG: no script and nothing fetched. The scaling is a pure function of
//! the points, tested below.

use maud::{Markup, html};

/// A chart's drawing size, in SVG units.
const CHART_WIDTH: f64 = 600.0;
const CHART_HEIGHT: f64 = 120.0;

/// The SVG `points` of a line through `points` (x, y): x scaled from the first point's to the
/// last's across the width (all at the left when they are equal), y from 0 to `y_max` up the
/// height (clamped; a `y_max` under 1 counts as 1).
pub fn polyline(points: &[(f64, f64)], y_max: f64) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    let x_span = last.0 - first.0;
    let y_max = y_max.max(1.0);
    let scaled: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let x = if x_span > 0.0 {
                (x - first.0) / x_span * CHART_WIDTH
            } else {
                0.0
            };
            let y = CHART_HEIGHT - (y / y_max).clamp(0.0, 1.0) * CHART_HEIGHT;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    scaled.join(" ")
}

/// A figure with a caption and the line through `points` (x, y), y scaled to `y_max`.
pub fn line(label: &str, points: &[(f64, f64)], y_max: f64) -> Markup {
    html! {
        figure {
            figcaption { (label) }
            svg viewBox={ "0 0 " (CHART_WIDTH) " " (CHART_HEIGHT) } width="100%" height="120"
                preserveAspectRatio="none" role="img" aria-label=(label) {
                polyline fill="none" stroke="#10243e" stroke-width="2" points=(polyline(points, y_max)) {}
            }
        }
    }
}

/// A line through `values` spaced evenly (oldest first), scaled to `y_max`.
pub fn evenly(label: &str, values: &[f64], y_max: f64) -> Markup {
    let points: Vec<(f64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64, *v))
        .collect();
    line(label, &points, y_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_span_the_width_and_rise_up_the_height() {
        let drawn = polyline(&[(10.0, 0.0), (15.0, 50.0), (20.0, 100.0)], 100.0);
        assert_eq!(drawn, "0.0,120.0 300.0,60.0 600.0,0.0");
    }

    #[test]
    fn values_past_the_top_are_clamped_and_one_point_sits_at_the_left() {
        assert_eq!(polyline(&[(5.0, 300.0)], 100.0), "0.0,0.0");
        assert_eq!(
            polyline(&[(1.0, -3.0), (2.0, 0.5)], 0.0),
            "0.0,120.0 600.0,60.0"
        );
        assert_eq!(polyline(&[], 10.0), "");
    }
}
