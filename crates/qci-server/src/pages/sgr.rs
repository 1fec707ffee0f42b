//! A log line's colours, as the page shows them: SGR sequences (`ESC [ … m`:
//! bold, italic, underline, the 16 colours, 256 and true colour mapped to
//! the nearest of the 16, reset) become runs of text with `sgr-…` classes,
//! which the style sheet colours (the pages' policy allows no `style=`).
//! Every other escape sequence and control character (tab kept) is dropped,
//! as [`qci_core::log::sanitize`] drops them, so nothing in a line can
//! drive the browser or a terminal the text is copied to.
//!
//! Each line starts plain: a colour left on by one line does not run into
//! the next (dom0 stamps every line, so a line is the unit a reader sees).
//! The work is one pass over the line, whatever its escapes.

/// A piece of a line with one style: its classes (space-separated, empty
/// for plain text) and its text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    pub class: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    /// One of the 16 colours.
    fg: Option<u8>,
    bg: Option<u8>,
}

impl Style {
    fn class(&self) -> String {
        let mut class = Vec::new();
        if self.bold {
            class.push("sgr-bold".to_owned());
        }
        if self.italic {
            class.push("sgr-italic".to_owned());
        }
        if self.underline {
            class.push("sgr-underline".to_owned());
        }
        if let Some(c) = self.fg {
            class.push(format!("sgr-fg{c}"));
        }
        if let Some(c) = self.bg {
            class.push(format!("sgr-bg{c}"));
        }
        class.join(" ")
    }

    /// Applies one SGR sequence's parameters (`1;31`, `38;5;196`, ``).
    fn apply(&mut self, params: &str) {
        let codes: Vec<u32> = params
            .split(';')
            .map(|p| match p {
                // An empty parameter is 0; one too big for any code, none.
                "" => 0,
                p => p.parse::<u32>().unwrap_or(u32::MAX),
            })
            .collect();
        let mut i = 0;
        while i < codes.len() {
            let code = codes[i];
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                3 => self.italic = true,
                4 => self.underline = true,
                21 | 22 => self.bold = false,
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.fg = Some((code - 30) as u8),
                39 => self.fg = None,
                40..=47 => self.bg = Some((code - 40) as u8),
                49 => self.bg = None,
                90..=97 => self.fg = Some((code - 90 + 8) as u8),
                100..=107 => self.bg = Some((code - 100 + 8) as u8),
                38 | 48 => {
                    let (colour, used) = extended(&codes[i + 1..]);
                    if let Some(c) = colour {
                        if code == 38 {
                            self.fg = Some(c);
                        } else {
                            self.bg = Some(c);
                        }
                    }
                    i += used;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// `5;N` or `2;R;G;B` after a 38 or 48: the nearest of the 16 colours, and
/// how many parameters it took.
fn extended(rest: &[u32]) -> (Option<u8>, usize) {
    match rest {
        [5, n, ..] => (nearest_of_256(*n), 2),
        [2, r, g, b, ..] => (Some(nearest(clamp(*r), clamp(*g), clamp(*b))), 4),
        [5] => (None, 1),
        [2, ..] => (None, rest.len()),
        _ => (None, 0),
    }
}

fn clamp(v: u32) -> u8 {
    v.min(255) as u8
}

/// The 16 colours as xterm shows them, to find the nearest one.
const PALETTE: [(u8, u8, u8); 16] = [
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
];

fn nearest_of_256(n: u32) -> Option<u8> {
    const LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    Some(match n {
        0..=15 => n as u8,
        16..=231 => {
            let n = (n - 16) as usize;
            nearest(LEVELS[n / 36], LEVELS[n / 6 % 6], LEVELS[n % 6])
        }
        232..=255 => {
            let grey = (8 + 10 * (n - 232)) as u8;
            nearest(grey, grey, grey)
        }
        // Not a colour.
        _ => return None,
    })
}

fn nearest(r: u8, g: u8, b: u8) -> u8 {
    let distance = |(pr, pg, pb): (u8, u8, u8)| {
        let d = |a: u8, b: u8| (i32::from(a) - i32::from(b)).pow(2);
        d(r, pr) + d(g, pg) + d(b, pb)
    };
    (0u8..16)
        .min_by_key(|&i| distance(PALETTE[usize::from(i)]))
        .unwrap_or(7)
}

/// The runs of one log line, its colours kept and every other escape gone.
/// The line is first cleaned as the log writer cleans (a published log
/// came from a machine: it may hold anything), which leaves only plain SGR
/// sequences to read here.
pub fn render(line: &str) -> Vec<Run> {
    let clean = qci_core::log::sanitize_keeping_sgr(line.as_bytes());
    let mut runs: Vec<Run> = Vec::new();
    let mut style = Style::default();
    let mut class = String::new();
    let mut rest = clean.as_str();
    while !rest.is_empty() {
        let (text, after) = match rest.find('\x1b') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if !text.is_empty() {
            match runs.last_mut() {
                Some(last) if last.class == class => last.text.push_str(text),
                _ => runs.push(Run {
                    class: class.clone(),
                    text: text.to_owned(),
                }),
            }
        }
        // What the cleaner left after an ESC is `[`, digits and `;`, `m`.
        rest = match after.strip_prefix("\x1b[").and_then(|s| s.split_once('m')) {
            Some((params, after)) => {
                style.apply(params);
                class = style.class();
                after
            }
            None => after.get(1..).unwrap_or(""),
        };
    }
    runs
}

/// The runs' text alone: the line as [`qci_core::log::sanitize`] shows it.
pub fn plain(runs: &[Run]) -> String {
    runs.iter().map(|r| r.text.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(class: &str, text: &str) -> Run {
        Run {
            class: class.into(),
            text: text.into(),
        }
    }

    #[test]
    fn colours_and_attributes_become_classes_and_reset_ends_them() {
        assert_eq!(
            render("a \x1b[1;31mred\x1b[0m b"),
            [run("", "a "), run("sgr-bold sgr-fg1", "red"), run("", " b")]
        );
        assert_eq!(
            render("\x1b[3;4;92;104mx\x1b[23;24;39;49my\x1b[mz"),
            [
                run("sgr-italic sgr-underline sgr-fg10 sgr-bg12", "x"),
                run("", "yz")
            ]
        );
        assert_eq!(
            render("\x1b[1mb\x1b[22mn"),
            [run("sgr-bold", "b"), run("", "n")]
        );
    }

    #[test]
    fn colours_of_256_and_true_colour_map_to_the_nearest_of_16() {
        assert_eq!(render("\x1b[38;5;196mx"), [run("sgr-fg9", "x")]);
        assert_eq!(render("\x1b[38;5;2mx"), [run("sgr-fg2", "x")]);
        assert_eq!(render("\x1b[48;5;232mx"), [run("sgr-bg0", "x")]);
        assert_eq!(render("\x1b[38;2;250;250;250mx"), [run("sgr-fg15", "x")]);
        assert_eq!(
            render("\x1b[38;2;0;0;200;1mx"),
            [run("sgr-bold sgr-fg4", "x")]
        );
        // Cut short or out of range: no colour, nothing breaks.
        assert_eq!(render("\x1b[38;5mx\x1b[38;2;1mx"), [run("", "xx")]);
        assert_eq!(render("\x1b[38;5;99999999999mx"), [run("", "x")]);
    }

    #[test]
    fn other_escapes_and_controls_are_stripped() {
        // OSC title, hyperlink, cursor moves, erase, charset, private CSI.
        assert_eq!(
            plain(&render(
                "\x1b]0;title\x07a\x1b]8;;http://x\x1b\\b\x1b]8;;\x1b\\\x1b[2K\x1b[10;5Hc\x1b(Bd\x1b[?25le"
            )),
            "abcde"
        );
        assert_eq!(
            render("a\x1b[1:3mb"),
            [run("", "ab")],
            "a colon SGR is not kept"
        );
        assert_eq!(
            plain(&render("a\x00b\x07c\x08d\x7fe\tf\u{85}g")),
            "abcde\tfg"
        );
        // The 8-bit CSI is not the plain form the log writer keeps: gone,
        // colour and all, as it is from the log file.
        assert_eq!(render("\u{9b}32mgreen"), [run("", "green")]);
    }

    #[test]
    fn an_unterminated_escape_swallows_the_rest_of_its_line_only() {
        assert_eq!(plain(&render("a\x1b[31")), "a");
        assert_eq!(plain(&render("a\x1b]0;title never ends")), "a");
        assert_eq!(plain(&render("a\x1b")), "a");
        // The next line starts plain.
        assert_eq!(render("\x1b[31mred"), [run("sgr-fg1", "red")]);
        assert_eq!(render("next"), [run("", "next")]);
    }

    #[test]
    fn markup_stays_text_for_the_page_to_escape() {
        assert_eq!(
            render("\x1b[31m<script>alert(1)</script>"),
            [run("sgr-fg1", "<script>alert(1)</script>")]
        );
    }

    #[test]
    fn ten_thousand_escapes_on_one_line_cost_one_pass() {
        let mut line = String::new();
        for i in 0..10_000 {
            line.push_str(&format!("\x1b[{}m{}", 31 + i % 2, i % 10));
        }
        let started = std::time::Instant::now();
        let runs = render(&line);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(runs.len(), 10_000);
        assert_eq!(plain(&runs).len(), 10_000);
        // And 10,000 that change nothing make one run.
        let same = "\x1b[31mx".repeat(10_000);
        assert_eq!(render(&same).len(), 1);
        // A parameter list that never ends is dropped, bounded.
        let long = format!("a\x1b[{}mb", "1;".repeat(100_000));
        assert_eq!(render(&long), [run("", "ab")]);
    }
}
