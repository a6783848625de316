//! securevm's own screens (the pre-boot login, the card-removal lock)
//! drawn into the XRGB8888 framebuffer that the VNC viewer shows.
//!
//! The guest can draw anything, so no look of ours can prove a screen is
//! securevm's; the machine-local prompt phrase can (see
//! `console::prompt_phrase`), so it gets a framed line of its own. Every
//! screen repaints the whole frame: over a locked, running guest nothing
//! of the guest's picture may stay visible.
//!
//! Text is drawn with GNU Unifont (the `unifont` crate), the one bitmap
//! font that covers the whole Basic Multilingual Plane: the phrase is the
//! administrator's free text and may well be Japanese. A character the
//! font lacks becomes an empty box; control characters are never drawn.
//! Glyphs are scaled by a whole factor picked from the frame size (2 on
//! 1280x800). Every coordinate is clipped, so any frame size, from 0x0
//! up, gets what fits and the rest is cut.

use std::cmp::{max, min};

/// A rectangle of pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    fn right(&self) -> u64 {
        u64::from(self.x) + u64::from(self.width)
    }

    fn bottom(&self) -> u64 {
        u64::from(self.y) + u64::from(self.height)
    }

    /// The part of `self` inside `other`; an empty overlap is the empty
    /// rectangle at the origin, so that it lies inside anything.
    fn intersect(&self, other: Rect) -> Rect {
        let x = max(self.x, other.x);
        let y = max(self.y, other.y);
        let width = min(self.right(), other.right()).saturating_sub(u64::from(x));
        let height = min(self.bottom(), other.bottom()).saturating_sub(u64::from(y));
        // Each size is at most one of the two rectangles' own, so it fits.
        match (u32::try_from(width), u32::try_from(height)) {
            (Ok(width @ 1..), Ok(height @ 1..)) => Rect {
                x,
                y,
                width,
                height,
            },
            _ => Rect::default(),
        }
    }

    /// `self` shrunk by `by` pixels on every side.
    fn inset(&self, by: u32) -> Rect {
        Rect {
            x: self.x.saturating_add(by),
            y: self.y.saturating_add(by),
            width: self.width.saturating_sub(by.saturating_mul(2)),
            height: self.height.saturating_sub(by.saturating_mul(2)),
        }
    }
}

/// What a field shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// Shown as typed (a user id).
    Text(&'a str),
    /// A secret: only how many characters it has, drawn as one dot each.
    Masked { chars: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// "User", "Passphrase", "PIN".
    pub label: &'a str,
    pub value: FieldValue<'a>,
}

/// One of securevm's screens. Not `Debug`: the phrase must never reach
/// a log.
#[derive(Clone, Copy)]
pub struct PromptScreen<'a> {
    /// "securevm — log in", "securevm — locked".
    pub title: &'a str,
    /// The machine-local prompt phrase; `None` draws a warning in its
    /// place that this screen cannot be told from a forgery.
    pub phrase: Option<&'a str>,
    pub fields: &'a [Field<'a>],
    /// Index into `fields` of the field keys go to; out of range means
    /// none.
    pub focus: usize,
    /// "Wrong passphrase. Wait 2 s.", "Locked: insert your card", ...
    pub message: Option<&'a str>,
}

const BACKGROUND: u32 = 0x0014_171c;
const PANEL: u32 = 0x0023_2830;
const PANEL_BORDER: u32 = 0x003a_4250;
const TITLE: u32 = 0x00f2_f4f7;
const LABEL: u32 = 0x009a_a4b2;
const TEXT: u32 = 0x00e6_e9ee;
const PHRASE_BACKGROUND: u32 = 0x001a_1d22;
const PHRASE_BORDER: u32 = 0x00d9_a441;
const NO_PHRASE: u32 = 0x00ff_8a65;
const FIELD_BACKGROUND: u32 = 0x0018_1b20;
const FIELD_BORDER: u32 = 0x004a_5361;
const FOCUS: u32 = 0x005f_a8ff;
const MESSAGE: u32 = 0x00ff_d166;

/// What a secret's every character is drawn as.
const MASK: char = '•';
const PHRASE_LABEL: &str = "Your machine's phrase:";
const NO_PHRASE_WARNING: &str = "No prompt phrase is set on this machine, so this screen cannot be told from one the guest draws.";

/// Unifont's cell: a halfwidth glyph is 8x16 pixels, a fullwidth one 16x16.
const GLYPH_WIDTH: u32 = 8;
const GLYPH_HEIGHT: u32 = 16;
/// The panel's text width in halfwidth columns, when the frame is wide
/// enough.
const PANEL_COLUMNS: u32 = 64;
/// How many lines a long phrase or message may wrap to: a phrase of
/// `MAX_PHRASE_BYTES` ASCII characters needs three on a 640-pixel-wide
/// frame, four if its words break the lines early.
const MAX_WRAPPED_LINES: usize = 4;
/// Frame pixels per glyph-scale step: 1280x800 draws glyphs twice their size.
const SCALE_STEP: (u32, u32) = (640, 400);
const MAX_SCALE: u32 = 8;

/// Draw `screen` over the whole of `frame`, a `width` x `height`
/// XRGB8888 picture stored row after row. Returns the damaged area: the
/// whole frame, or as many whole rows of it as `frame` holds.
pub fn draw(screen: &PromptScreen, frame: &mut [u32], width: u32, height: u32) -> Rect {
    let mut canvas = Canvas::new(frame, width, height);
    let bounds = canvas.bounds();
    canvas.fill(bounds, BACKGROUND);
    if bounds.is_empty() {
        return bounds;
    }
    let scale = (bounds.width / SCALE_STEP.0)
        .min(bounds.height / SCALE_STEP.1)
        .clamp(1, MAX_SCALE);
    let layout = Layout::new(screen, bounds, scale);
    layout.draw(screen, &mut canvas);
    bounds
}

/// The frame as a clipped drawing surface.
struct Canvas<'f> {
    pixels: &'f mut [u32],
    width: u32,
    height: u32,
}

impl<'f> Canvas<'f> {
    /// Only whole rows that `pixels` really holds are drawn on.
    fn new(pixels: &'f mut [u32], width: u32, height: u32) -> Self {
        let rows = pixels.len().checked_div(width as usize).unwrap_or(0);
        let height = u32::try_from(rows).map_or(height, |rows| rows.min(height));
        Self {
            pixels,
            width,
            height,
        }
    }

    fn bounds(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: if self.height == 0 { 0 } else { self.width },
            height: self.height,
        }
    }

    fn fill(&mut self, rect: Rect, color: u32) {
        let rect = rect.intersect(self.bounds());
        for y in rect.y..rect.y + rect.height {
            let start = y as usize * self.width as usize + rect.x as usize;
            self.pixels[start..start + rect.width as usize].fill(color);
        }
    }

    /// A `thickness`-pixel frame along the inside of `rect` (of its part
    /// in the frame).
    fn outline(&mut self, rect: Rect, thickness: u32, color: u32) {
        let rect = rect.intersect(self.bounds());
        let thickness = thickness.min(rect.width).min(rect.height);
        let bottom = rect.y + rect.height - thickness;
        let right = rect.x + rect.width - thickness;
        self.fill(
            Rect {
                height: thickness,
                ..rect
            },
            color,
        );
        self.fill(
            Rect {
                y: bottom,
                height: thickness,
                ..rect
            },
            color,
        );
        self.fill(
            Rect {
                width: thickness,
                ..rect
            },
            color,
        );
        self.fill(
            Rect {
                x: right,
                width: thickness,
                ..rect
            },
            color,
        );
    }
}

/// How text is drawn: the glyph scale and the rectangle it is cut to.
#[derive(Clone, Copy)]
struct Pen {
    scale: u32,
    clip: Rect,
    color: u32,
}

impl Pen {
    fn column_width(&self) -> u32 {
        GLYPH_WIDTH * self.scale
    }

    fn line_height(&self) -> u32 {
        GLYPH_HEIGHT * self.scale
    }

    /// Draw `text` from (`x`, `y`), its top left corner; returns where the
    /// next character would go.
    fn text(&self, canvas: &mut Canvas, x: u32, y: u32, text: &str) -> u32 {
        let mut x = x;
        for c in text.chars() {
            // What starts right of the clip is cut anyway.
            if u64::from(x) >= self.clip.right() {
                break;
            }
            x = self.character(canvas, x, y, c);
        }
        x
    }

    /// Draw `c` at (`x`, `y`); returns where the next character goes. A
    /// control character has no width, so nothing of it is drawn.
    fn character(&self, canvas: &mut Canvas, x: u32, y: u32, c: char) -> u32 {
        let advance = columns(c).saturating_mul(self.column_width());
        let cell = Rect {
            x,
            y,
            width: advance,
            height: self.line_height(),
        };
        if cell.intersect(self.clip).is_empty() {
            return x.saturating_add(advance);
        }
        match unifont::get_glyph(c) {
            Some(glyph) => {
                for (row, col) in (0..GLYPH_HEIGHT)
                    .flat_map(|row| (0..GLYPH_WIDTH * 2).map(move |col| (row, col)))
                {
                    if glyph.get_pixel(col as usize, row as usize) {
                        let dot = Rect {
                            x: x.saturating_add(col * self.scale),
                            y: y.saturating_add(row * self.scale),
                            width: self.scale,
                            height: self.scale,
                        };
                        canvas.fill(dot.intersect(self.clip), self.color);
                    }
                }
            }
            None => {
                let outline = cell.inset(self.scale).intersect(self.clip);
                canvas.outline(outline, self.scale, self.color);
            }
        }
        x.saturating_add(advance)
    }

    fn with_color(self, color: u32) -> Pen {
        Pen { color, ..self }
    }
}

/// Halfwidth columns `c` takes: 2 for a fullwidth glyph, 0 for a control
/// character (not drawn), 1 for the rest (a missing glyph's box too).
fn columns(c: char) -> u32 {
    if c.is_control() {
        0
    } else if unifont::get_glyph(c).is_some_and(unifont::Glyph::is_fullwidth) {
        2
    } else {
        1
    }
}

/// `text` cut into lines of at most `max_columns`, at most `max_lines` of
/// them; what does not fit is dropped.
fn wrap(text: &str, max_columns: u32, max_lines: usize) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() && lines.len() < max_lines {
        let (line, next) = split_line(rest, max_columns);
        if !line.is_empty() {
            lines.push(line);
        }
        rest = next;
    }
    lines
}

/// The first line of `text` (at least one character, even one too wide)
/// and the text after it. A line breaks after its last space when it has
/// one, and the spaces at the break are not shown.
fn split_line(text: &str, max_columns: u32) -> (&str, &str) {
    let mut used = 0;
    let mut last_space = None;
    for (index, c) in text.char_indices() {
        used += columns(c);
        if used > max_columns && index > 0 {
            let end = if c == ' ' {
                index
            } else {
                last_space.filter(|&space| space > 0).unwrap_or(index)
            };
            return (
                text[..end].trim_end_matches(' '),
                text[end..].trim_start_matches(' '),
            );
        }
        if c == ' ' {
            last_space = Some(index);
        }
    }
    (text, "")
}

/// The end of `text` that fits in `max_columns`: a field shows where the
/// typing is.
fn tail(text: &str, max_columns: u32) -> &str {
    let mut used = 0;
    for (index, c) in text.char_indices().rev() {
        used += columns(c);
        if used > max_columns {
            return &text[index + c.len_utf8()..];
        }
    }
    text
}

/// Where everything goes, worked out before any drawing.
struct Layout<'a> {
    pen: Pen,
    panel: Rect,
    /// Where text starts and how wide it may be.
    content: Rect,
    label_columns: u32,
    phrase_lines: Vec<&'a str>,
    message_lines: Vec<&'a str>,
}

impl<'a> Layout<'a> {
    fn new(screen: &PromptScreen<'a>, bounds: Rect, scale: u32) -> Self {
        let pen = Pen {
            scale,
            clip: bounds,
            color: TEXT,
        };
        let column = pen.column_width();
        let padding = column * 2;
        let content_width = (PANEL_COLUMNS * column)
            .min(bounds.width.saturating_sub(padding.saturating_mul(4)))
            .max(column);
        let content_columns = content_width / column;
        // A box around the phrase takes a column on each side.
        let phrase_columns = content_columns.saturating_sub(2).max(1);
        let phrase_lines = wrap(
            screen.phrase.unwrap_or(NO_PHRASE_WARNING),
            phrase_columns,
            MAX_WRAPPED_LINES,
        );
        let message_lines = screen
            .message
            .map(|message| wrap(message, content_columns, MAX_WRAPPED_LINES))
            .unwrap_or_default();
        let label_columns = screen
            .fields
            .iter()
            .map(|field| field.label.chars().map(columns).sum::<u32>())
            .max()
            .unwrap_or(0)
            .min(content_columns / 3)
            + 1;
        let mut layout = Self {
            pen,
            panel: Rect::default(),
            content: Rect {
                width: content_width,
                ..Rect::default()
            },
            label_columns,
            phrase_lines,
            message_lines,
        };
        let content_height = layout.content_height(screen.fields.len());
        let panel_width = content_width + 2 * padding;
        let panel_height = content_height.saturating_add(2 * padding);
        layout.panel = Rect {
            x: bounds.width.saturating_sub(panel_width) / 2,
            y: bounds.height.saturating_sub(panel_height) / 2,
            width: panel_width,
            height: panel_height,
        };
        layout.content = Rect {
            x: layout.panel.x + padding,
            y: layout.panel.y + padding,
            width: content_width,
            height: content_height,
        };
        layout
    }

    fn box_padding(&self) -> u32 {
        self.pen.scale * 4
    }

    fn line_height(&self) -> u32 {
        self.pen.line_height()
    }

    /// Room between the phrase's label and its frame.
    fn label_gap(&self) -> u32 {
        self.pen.scale * 3
    }

    fn phrase_box_height(&self) -> u32 {
        let lines = u32::try_from(self.phrase_lines.len()).unwrap_or(u32::MAX);
        lines.saturating_mul(self.line_height()) + 2 * self.box_padding()
    }

    fn field_height(&self) -> u32 {
        self.line_height() + 2 * self.box_padding()
    }

    /// Title, rule, phrase label and box, the fields, the message.
    fn content_height(&self, fields: usize) -> u32 {
        let line = self.line_height();
        let fields = u32::try_from(fields).unwrap_or(u32::MAX);
        let messages = u32::try_from(self.message_lines.len()).unwrap_or(u32::MAX);
        let field_rows = fields.saturating_mul(self.field_height() + line / 2);
        (line * 3 + self.label_gap() + self.phrase_box_height())
            .saturating_add(line)
            .saturating_add(field_rows)
            .saturating_add(messages.saturating_mul(line))
    }

    fn draw(&self, screen: &PromptScreen, canvas: &mut Canvas) {
        canvas.fill(self.panel, PANEL);
        canvas.outline(self.panel, self.pen.scale, PANEL_BORDER);
        let pen = Pen {
            clip: self.content.intersect(canvas.bounds()),
            ..self.pen
        };
        let line = self.line_height();
        let mut y = self.content.y;
        pen.with_color(TITLE)
            .text(canvas, self.content.x, y, screen.title);
        y = y.saturating_add(line + line / 2);
        let rule = Rect {
            x: self.content.x,
            y,
            width: self.content.width,
            height: self.pen.scale,
        };
        canvas.fill(rule.intersect(pen.clip), PANEL_BORDER);
        y = y.saturating_add(line / 2);
        y = self.draw_phrase(screen.phrase.is_some(), canvas, pen, y);
        y = y.saturating_add(line);
        for (index, field) in screen.fields.iter().enumerate() {
            self.draw_field(field, index == screen.focus, canvas, pen, y);
            y = y.saturating_add(self.field_height() + line / 2);
        }
        let message = pen.with_color(MESSAGE);
        for text in &self.message_lines {
            message.text(canvas, self.content.x, y, text);
            y = y.saturating_add(line);
        }
    }

    /// The label, then the phrase (or the warning that there is none) in
    /// its frame; returns the y below it.
    fn draw_phrase(&self, has_phrase: bool, canvas: &mut Canvas, pen: Pen, y: u32) -> u32 {
        pen.with_color(LABEL)
            .text(canvas, self.content.x, y, PHRASE_LABEL);
        let y = y.saturating_add(self.line_height() + self.label_gap());
        let frame = Rect {
            x: self.content.x,
            y,
            width: self.content.width,
            height: self.phrase_box_height(),
        };
        canvas.fill(frame.intersect(pen.clip), PHRASE_BACKGROUND);
        let (border, color) = if has_phrase {
            (PHRASE_BORDER, TEXT)
        } else {
            (NO_PHRASE, NO_PHRASE)
        };
        canvas.outline(frame.intersect(pen.clip), self.pen.scale, border);
        let inner = Pen {
            clip: frame.inset(self.box_padding()).intersect(pen.clip),
            color,
            ..pen
        };
        let mut line_y = y.saturating_add(self.box_padding());
        for text in &self.phrase_lines {
            inner.text(canvas, self.content.x + pen.column_width(), line_y, text);
            line_y = line_y.saturating_add(self.line_height());
        }
        y.saturating_add(frame.height)
    }

    /// "Label  [value_]" on one row.
    fn draw_field(&self, field: &Field, focused: bool, canvas: &mut Canvas, pen: Pen, y: u32) {
        let column = pen.column_width();
        let text_y = y.saturating_add(self.box_padding());
        pen.with_color(LABEL)
            .text(canvas, self.content.x, text_y, field.label);
        let label_width = self.label_columns * column;
        let frame = Rect {
            x: self.content.x + label_width,
            y,
            width: self.content.width.saturating_sub(label_width),
            height: self.field_height(),
        };
        canvas.fill(frame.intersect(pen.clip), FIELD_BACKGROUND);
        let border = if focused { FOCUS } else { FIELD_BORDER };
        canvas.outline(frame.intersect(pen.clip), self.pen.scale, border);
        let inner = Pen {
            clip: frame.inset(self.box_padding()).intersect(pen.clip),
            ..pen
        };
        // One column of margin on the left and one kept for the cursor.
        let value_columns = (frame.width / column).saturating_sub(3);
        let text_x = frame.x + column;
        let end = match field.value {
            FieldValue::Text(text) => inner.text(canvas, text_x, text_y, tail(text, value_columns)),
            FieldValue::Masked { chars } => {
                let shown = min(chars, value_columns as usize);
                (0..shown).fold(text_x, |x, _| inner.character(canvas, x, text_y, MASK))
            }
        };
        if focused {
            let cursor = Rect {
                x: end,
                y: text_y.saturating_add(self.line_height() - 2 * self.pen.scale),
                width: column,
                height: 2 * self.pen.scale,
            };
            canvas.fill(cursor.intersect(inner.clip), FOCUS);
        }
    }
}

#[cfg(test)]
#[path = "screen_tests.rs"]
mod tests;
