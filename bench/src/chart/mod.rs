//! Line charts as PNG files, drawn by the harness itself so that a soak run's graph comes out of
//! the same command that ran it, on any machine, with no plotting program installed.
//!
//! A chart is a column of panels that share one x axis (time); each panel has its own y axis
//! starting at zero, so growth is never exaggerated by a cropped scale.

mod font;
pub mod png;

/// An RGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

pub const WHITE: Rgb = Rgb(255, 255, 255);
pub const BLACK: Rgb = Rgb(0, 0, 0);
pub const GRID: Rgb = Rgb(225, 225, 225);
pub const BLUE: Rgb = Rgb(31, 90, 180);
pub const RED: Rgb = Rgb(200, 40, 40);
pub const GREEN: Rgb = Rgb(30, 140, 60);
pub const SHADE: Rgb = Rgb(250, 228, 228);

/// One line: (x, y) points in data units, x ascending.
pub struct Series {
    pub label: String,
    pub colour: Rgb,
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title (which names the unit) and its lines.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// What is drawn: panels stacked top to bottom over `0..=x_max`, and x ranges shaded in every
/// panel (a soak run's backend outages).
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub x_max: f64,
    pub shaded: Vec<(f64, f64)>,
    pub panels: Vec<Panel>,
}

const SCALE: usize = 2;
const CHAR_W: usize = (font::WIDTH + 1) * SCALE;
const CHAR_H: usize = font::HEIGHT * SCALE;
const LEFT: usize = 90;
const RIGHT: usize = 24;
const TOP: usize = 44;
const PANEL_HEIGHT: usize = 170;
const PANEL_GAP: usize = 46;
const BOTTOM: usize = 56;

impl Chart {
    /// Renders the chart, `width` pixels wide, as a PNG file.
    pub fn to_png(&self, width: usize) -> Vec<u8> {
        let height = TOP + self.panels.len() * (PANEL_HEIGHT + PANEL_GAP) - PANEL_GAP + BOTTOM;
        let mut canvas = Canvas::new(width, height);
        canvas.text(LEFT, 12, &self.title, BLACK);
        let plot_width = width - LEFT - RIGHT;
        let x_ticks = ticks(self.x_max, false);
        let x_max = x_ticks.last().copied().unwrap_or(1.0).max(self.x_max);
        let x_px = |x: f64| LEFT as f64 + x / x_max * plot_width as f64;
        for (i, panel) in self.panels.iter().enumerate() {
            let top = TOP + i * (PANEL_HEIGHT + PANEL_GAP) + CHAR_H + 6;
            let bottom = TOP + i * (PANEL_HEIGHT + PANEL_GAP) + PANEL_HEIGHT;
            canvas.text(LEFT, top - CHAR_H - 6, &panel.title, BLACK);
            let y_data_max = panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0.0f64, f64::max);
            let y_ticks = ticks(y_data_max, true);
            let y_max = y_ticks.last().copied().unwrap_or(1.0);
            let y_px = |y: f64| bottom as f64 - y / y_max * (bottom - top) as f64;
            for (from, to) in &self.shaded {
                let (a, b) = (x_px(*from) as usize, x_px(to.min(x_max)) as usize);
                canvas.fill(a, top, b.max(a + 1), bottom, SHADE);
            }
            for tick in &y_ticks {
                let y = y_px(*tick).round() as usize;
                canvas.line(
                    LEFT as f64,
                    y as f64,
                    (width - RIGHT) as f64,
                    y as f64,
                    GRID,
                );
                let label = number(*tick);
                let x = LEFT.saturating_sub(8 + label.len() * CHAR_W);
                canvas.text(x, y.saturating_sub(CHAR_H / 2), &label, BLACK);
            }
            for tick in &x_ticks {
                let x = x_px(*tick);
                canvas.line(x, top as f64, x, bottom as f64, GRID);
            }
            canvas.line(LEFT as f64, top as f64, LEFT as f64, bottom as f64, BLACK);
            canvas.line(
                LEFT as f64,
                bottom as f64,
                (width - RIGHT) as f64,
                bottom as f64,
                BLACK,
            );
            let mut legend_x = width - RIGHT;
            for series in panel.series.iter().rev() {
                legend_x -= (series.label.len() + 4) * CHAR_W;
                let y = top - CHAR_H - 6;
                canvas.fill(
                    legend_x,
                    y + 4,
                    legend_x + 2 * CHAR_W,
                    y + CHAR_H - 4,
                    series.colour,
                );
                canvas.text(legend_x + 3 * CHAR_W, y, &series.label, series.colour);
                for pair in series.points.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    canvas.thick_line(x_px(a.0), y_px(a.1), x_px(b.0), y_px(b.1), series.colour);
                }
            }
            if i + 1 == self.panels.len() {
                for tick in &x_ticks {
                    let label = number(*tick);
                    let x = (x_px(*tick) as usize).saturating_sub(label.len() * CHAR_W / 2);
                    canvas.text(x, bottom + 8, &label, BLACK);
                }
                let label_x = LEFT + plot_width / 2 - self.x_label.len() * CHAR_W / 2;
                canvas.text(label_x, bottom + 14 + CHAR_H, &self.x_label, BLACK);
            }
        }
        png::encode_rgb(width as u32, height as u32, &canvas.pixels)
    }
}

/// Axis ticks from 0 at a step of 1, 2 or 5 times a power of ten, at most seven of them. With
/// `headroom` the last tick lies above `max` (a y axis, so the highest point is not drawn on
/// the frame); without it, the last is the first at or above `max` (the time axis).
fn ticks(max: f64, headroom: bool) -> Vec<f64> {
    if !(max.is_finite() && max > 0.0) {
        return vec![0.0, 1.0];
    }
    let magnitude = 10f64.powf((max / 4.0).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| max / step <= 6.01)
        .unwrap_or(10.0 * magnitude);
    // A time axis that overshoots its last tick by a hair (a 3,600.4 s run) ends at that tick
    // rather than adding a whole empty step.
    let count = if headroom {
        (max / step).floor() as usize + 1
    } else {
        (max / step - 0.01).ceil().max(1.0) as usize
    };
    (0..=count).map(|i| i as f64 * step).collect()
}

/// A tick label: no decimals for whole numbers, else as few as show the value.
fn number(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else if (value * 10.0).fract().abs() < 1e-6 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// An RGB pixel buffer with the few drawing operations charts need.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    fn set(&mut self, x: usize, y: usize, colour: Rgb) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.pixels[i..i + 3].copy_from_slice(&[colour.0, colour.1, colour.2]);
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, colour: Rgb) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.set(x, y, colour);
            }
        }
    }

    /// A one-pixel line by stepping along its longer axis.
    fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, colour: Rgb) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            if x >= 0.0 && y >= 0.0 {
                self.set(x.round() as usize, y.round() as usize, colour);
            }
        }
    }

    /// A two-pixel line, so data stands out from the grid.
    fn thick_line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, colour: Rgb) {
        self.line(x0, y0, x1, y1, colour);
        self.line(x0, y0 + 1.0, x1, y1 + 1.0, colour);
    }

    fn text(&mut self, x: usize, y: usize, text: &str, colour: Rgb) {
        for (i, c) in text.chars().enumerate() {
            let left = x + i * CHAR_W;
            for (row, bits) in font::glyph(c).iter().enumerate() {
                for column in 0..font::WIDTH {
                    if bits & (1 << (font::WIDTH - 1 - column)) != 0 {
                        let (px, py) = (left + column * SCALE, y + row * SCALE);
                        self.fill(px, py, px + SCALE, py + SCALE, colour);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_data_in_round_steps() {
        let labels = |max, headroom| -> Vec<String> {
            ticks(max, headroom).into_iter().map(number).collect()
        };
        assert_eq!(labels(37.0, true), ["0", "10", "20", "30", "40"]);
        assert_eq!(
            labels(60.0, true),
            ["0", "10", "20", "30", "40", "50", "60", "70"]
        );
        assert_eq!(
            labels(60.0, false),
            ["0", "10", "20", "30", "40", "50", "60"]
        );
        assert_eq!(
            labels(60.01, false),
            ["0", "10", "20", "30", "40", "50", "60"]
        );
        assert_eq!(labels(0.7, true), ["0", "0.2", "0.4", "0.6", "0.8"]);
        assert_eq!(labels(5.0, true), ["0", "1", "2", "3", "4", "5", "6"]);
        assert_eq!(labels(0.0, true), ["0", "1"]);
    }

    #[test]
    fn a_chart_draws_its_series_where_the_data_says() {
        let chart = Chart {
            title: "T".into(),
            x_label: "MINUTES".into(),
            x_max: 10.0,
            shaded: vec![(2.0, 3.0)],
            panels: vec![Panel {
                title: "RSS (MB)".into(),
                series: vec![Series {
                    label: "RSS".into(),
                    colour: RED,
                    points: vec![(0.0, 5.0), (10.0, 5.0)],
                }],
            }],
        };
        let width = 400;
        let file = chart.to_png(width);
        let pixels = decode(&file, width);
        let height = pixels.len() / (width * 3);
        let at = |x: usize, y: usize| {
            let i = (y * width + x) * 3;
            Rgb(pixels[i], pixels[i + 1], pixels[i + 2])
        };
        // The panel's y axis runs 0..=6 (ticks(5) steps by 1): y = 5 is 5/6 of the way up.
        let top = TOP + CHAR_H + 6;
        let bottom = TOP + PANEL_HEIGHT;
        let y5 = (bottom as f64 - 5.0 / 6.0 * (bottom - top) as f64).round() as usize;
        let mid = LEFT + (width - LEFT - RIGHT) / 2;
        assert_eq!(at(mid, y5), RED, "the line at y = 5");
        assert_eq!(at(mid, y5 + 3), WHITE, "nothing below it");
        // x = 2.5 lies in the shaded outage.
        let shaded_x = LEFT + (width - LEFT - RIGHT) / 4;
        assert_eq!(at(shaded_x, bottom - 10), SHADE);
        assert_eq!(at(LEFT, bottom - 10), BLACK, "the y axis");
        assert_eq!(height, TOP + PANEL_HEIGHT + BOTTOM);
    }

    fn decode(file: &[u8], width: usize) -> Vec<u8> {
        let idat_len = u32::from_be_bytes(file[33..37].try_into().unwrap()) as usize;
        assert_eq!(&file[37..41], b"IDAT");
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&file[41..41 + idat_len]).unwrap();
        let row = width * 3;
        let mut out = Vec::new();
        for line in raw.chunks_exact(row + 1) {
            let start = out.len();
            for (i, byte) in line[1..].iter().enumerate() {
                let left = if i >= 3 { out[start + i - 3] } else { 0u8 };
                out.push(byte.wrapping_add(left));
            }
        }
        out
    }
}
