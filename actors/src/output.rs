//! Reading a flow's output pipes into events that fit: lines come in
//! pieces of bounded size, cut only between characters, and a piece's text
//! is split again so that each event's JSON fits the payload limit once
//! escaped (a NUL byte takes six bytes as `\u0000`, a quote two).
//!
//! Reading is cancel-safe: a partly read line stays in the reader, so a
//! read may be raced against other pipes and dropped without losing bytes.

use kodo_core::json_text;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What one read of a pipe gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    /// A whole line (or the last bytes before end of input), without its
    /// line ending.
    Line(String),
    /// The next part of a line longer than the reader's limit; more of the
    /// same line follows.
    Part(String),
}

impl Piece {
    /// The text, whichever it is.
    pub fn text(&self) -> &str {
        match self {
            Piece::Line(t) | Piece::Part(t) => t,
        }
    }
}

/// Reads lines of at most `max` bytes from a pipe; a longer line comes in
/// [`Piece::Part`]s cut between UTF-8 characters. Invalid UTF-8 becomes
/// U+FFFD.
pub struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of lines up to `max` bytes (at least 4).
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader: BufReader::new(reader),
            line: Vec::new(),
            max: max.max(4),
        }
    }

    /// The next piece; `None` at end of input. Cancel-safe.
    pub async fn next(&mut self) -> std::io::Result<Option<Piece>> {
        loop {
            let buf = self.reader.fill_buf().await?;
            // From here to the return or the next loop, nothing awaits: the
            // bytes copied and the bytes consumed always agree.
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Piece::Line(text(std::mem::take(&mut self.line)))));
            }
            let room = self.max - self.line.len();
            if let Some(i) = buf.iter().take(room + 1).position(|&b| b == b'\n') {
                self.line.extend_from_slice(&buf[..i]);
                self.reader.consume(i + 1);
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(Piece::Line(text(line))));
            }
            if room == 0 {
                let cut = char_boundary(&self.line, self.max);
                let rest = self.line.split_off(cut);
                let part = std::mem::replace(&mut self.line, rest);
                return Ok(Some(Piece::Part(text(part))));
            }
            let n = buf.len().min(room);
            self.line.extend_from_slice(&buf[..n]);
            self.reader.consume(n);
        }
    }
}

/// The largest cut at or below `max` that does not split a UTF-8 character
/// (`max` itself when the bytes there are not valid UTF-8 anyway).
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let max = max.min(bytes.len());
    // The start of the last character that begins within the first `max` bytes.
    let Some(start) = (max.saturating_sub(4)..max)
        .rev()
        .find(|&i| bytes[i] & 0b1100_0000 != 0b1000_0000)
    else {
        return max;
    };
    let len = match bytes[start] {
        b if b < 0x80 => 1,
        b if b >> 5 == 0b110 => 2,
        b if b >> 4 == 0b1110 => 3,
        b if b >> 3 == 0b1_1110 => 4,
        _ => 1,
    };
    if start + len > max && start > 0 {
        start
    } else {
        max
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// How many bytes a character takes inside a JSON string (as serde_json
/// writes it).
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `text` as JSON strings of at most `max` bytes each (quotes included),
/// in order; together they hold all of it. An empty text is one empty string.
pub fn json_pieces(text: &str, max: usize) -> Vec<String> {
    let room = max.saturating_sub(2).max(6);
    let mut pieces = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, c) in text.char_indices() {
        let cost = escaped_len(c);
        if size + cost > room {
            pieces.push(json_text(&text[start..i]));
            (start, size) = (i, 0);
        }
        size += cost;
    }
    if start < text.len() || pieces.is_empty() {
        pieces.push(json_text(&text[start..]));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn pieces(data: &[u8], max: usize, capacity: usize) -> Vec<Piece> {
        let mut reader = LineReader::new(data, max);
        reader.reader = BufReader::with_capacity(capacity, data);
        let mut out = Vec::new();
        while let Some(piece) = reader.next().await.unwrap() {
            out.push(piece);
        }
        out
    }

    #[tokio::test]
    async fn long_lines_come_in_parts_and_nothing_is_lost() {
        let data = b"short\r\n0123456789abcdef\nlast-without-newline";
        let got = pieces(data, 10, 4).await;
        use Piece::*;
        assert_eq!(
            got,
            [
                Line("short".into()),
                Part("0123456789".into()),
                Line("abcdef".into()),
                Part("last-witho".into()),
                Line("ut-newline".into()),
            ]
        );
        let bad = [0xff, 0xfe, b'o', b'k', b'\n'];
        assert_eq!(
            pieces(&bad, 64, 8).await,
            [Line("\u{fffd}\u{fffd}ok".into())]
        );
        // A line of exactly the limit is one line.
        assert_eq!(
            pieces(b"0123456789\n", 10, 3).await,
            [Line("0123456789".into())]
        );
    }

    #[tokio::test]
    async fn a_cut_never_splits_a_character() {
        let line = "aé€😀".repeat(50);
        for max in 4..20 {
            let got = pieces(line.as_bytes(), max, 7).await;
            let joined: String = got.iter().map(Piece::text).collect();
            assert_eq!(joined, line, "max {max}");
            assert!(got.iter().all(|p| p.text().len() <= max));
        }
    }

    #[test]
    fn json_pieces_fit_once_escaped() {
        let nul = "\0".repeat(1000);
        let quotes = "\"".repeat(1000);
        for text in [
            nul.as_str(),
            quotes.as_str(),
            "plain",
            "",
            "a\u{1f}b\\c\"é😀",
        ] {
            let got = json_pieces(text, 64);
            let back: String = got
                .iter()
                .map(|p| serde_json::from_str::<String>(p).unwrap())
                .collect();
            assert_eq!(back, text);
            assert!(got.iter().all(|p| p.len() <= 64), "{text:?}");
        }
        assert_eq!(json_pieces("\0".repeat(100).as_str(), 64).len(), 10);
    }

    proptest! {
        #[test]
        fn escaped_len_matches_serde_json(c in any::<char>()) {
            prop_assert_eq!(escaped_len(c) + 2, serde_json::to_string(&c.to_string()).unwrap().len());
        }

        #[test]
        fn any_text_splits_into_fitting_pieces(text in ".{0,300}", max in 8usize..80) {
            let got = json_pieces(&text, max);
            let back: String = got.iter().map(|p| serde_json::from_str::<String>(p).unwrap()).collect();
            prop_assert_eq!(back, text);
            prop_assert!(got.iter().all(|p| p.len() <= max));
        }
    }
}
