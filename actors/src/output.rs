//! Reading a flow's output pipes into events that fit: lines come in
//! pieces of bounded size, cut only between characters, and a piece's text
//! is split again so that each event's JSON fits the payload limit once
//! escaped (a NUL byte takes six bytes as `\u0000`, a quote two).
//!
//! [`PipeReader::next`] is cancel-safe: bytes read are kept in the reader,
//! so a read may be raced against other pipes and dropped without losing
//! any. [`PipeReader::catch_up`] takes what the pipe holds right now with a
//! real read, not the reactor's cached readiness (which may not have seen
//! the bytes yet): what a flow wrote before is surely there.

use kodo_core::json_text;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;

/// What one read of a pipe gives.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Piece {
    /// A whole line (or the last bytes before end of input), without its
    /// line ending.
    Line(String),
    /// The next part of a line longer than the reader's limit; more of the
    /// same line follows.
    Part(String),
}

impl Piece {
    /// The text, whichever it is.
    pub(crate) fn text(&self) -> &str {
        match self {
            Piece::Line(t) | Piece::Part(t) => t,
        }
    }
}

/// Splits bytes into lines of at most `max` bytes; a longer line comes in
/// [`Piece::Part`]s cut between UTF-8 characters. Invalid UTF-8 becomes
/// U+FFFD.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start (consumed bytes are dropped
    /// in bulk, not per line).
    start: usize,
    /// Unread bytes already searched for a line end.
    searched: usize,
    max: usize,
}

impl LineSplitter {
    /// A splitter of lines up to `max` bytes (at least 4).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            searched: 0,
            max: max.max(4),
        }
    }

    /// Adds bytes read.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next `n` unread bytes.
    fn take(&mut self, n: usize) -> &[u8] {
        let taken = &self.buf[self.start..self.start + n];
        self.start += n;
        self.searched = 0;
        taken
    }

    /// The next complete piece in what was pushed, if any.
    pub(crate) fn next_piece(&mut self) -> Option<Piece> {
        let unread = &self.buf[self.start..];
        let window = unread.len().min(self.max + 1);
        let from = self.searched.min(window);
        if let Some(i) = unread[from..window].iter().position(|&b| b == b'\n') {
            let line = self.take(from + i + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Some(Piece::Line(text(line)));
        }
        self.searched = window;
        if unread.len() > self.max {
            let cut = char_boundary(unread, self.max);
            return Some(Piece::Part(text(self.take(cut))));
        }
        None
    }

    /// What is left at the end of input (a last line without its end).
    pub(crate) fn finish(&mut self) -> Option<Piece> {
        if let Some(piece) = self.next_piece() {
            return Some(piece);
        }
        let rest = self.buf.len() - self.start;
        (rest > 0).then(|| Piece::Line(text(self.take(rest))))
    }
}

/// Bytes one read takes from a pipe.
const CHUNK: usize = 16 * 1024;

/// Reads a pipe (non-blocking, through the reactor) into pieces of lines.
pub(crate) struct PipeReader {
    fd: AsyncFd<File>,
    lines: LineSplitter,
    chunk: Box<[u8]>,
    eof: bool,
    /// Bytes read so far.
    read: u64,
}

impl PipeReader {
    /// Reads the pipe `fd` in lines of at most `max` bytes.
    pub(crate) fn new(fd: OwnedFd, max: usize) -> std::io::Result<Self> {
        let fd = crate::sys::readable_pipe(fd)?;
        Ok(Self {
            fd,
            lines: LineSplitter::new(max),
            chunk: vec![0; CHUNK].into_boxed_slice(),
            eof: false,
            read: 0,
        })
    }

    /// The next piece; `None` at end of input. Cancel-safe.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<Piece>> {
        loop {
            if let Some(piece) = self.lines.next_piece() {
                return Ok(Some(piece));
            }
            if self.eof {
                return Ok(self.lines.finish());
            }
            let mut ready = self.fd.readable().await?;
            // Read and pushed with no await between: nothing read is lost
            // if this future is dropped at the await above.
            match ready.try_io(|fd| fd.get_ref().read(&mut self.chunk)) {
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(n)) => self.keep(n),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Takes everything the pipe holds now (at most one pipe's capacity:
    /// what was written before this call), without waiting; the pieces it
    /// completes come from [`PipeReader::next`] at once.
    pub(crate) fn catch_up(&mut self) -> std::io::Result<()> {
        let mut left = self.held()?;
        while left > 0 && !self.eof {
            let want = left.min(self.chunk.len());
            match self.fd.get_ref().read(&mut self.chunk[..want]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.keep(n);
                    left -= n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Keeps the `n` bytes just read into the chunk.
    fn keep(&mut self, n: usize) {
        self.lines.push(&self.chunk[..n]);
        self.read += n as u64;
    }

    /// Bytes the pipe holds now, not read yet.
    pub(crate) fn held(&self) -> std::io::Result<usize> {
        crate::sys::bytes_held(self.fd.get_ref())
    }

    /// Bytes read from the pipe so far.
    pub(crate) fn read_bytes(&self) -> u64 {
        self.read
    }

    /// A complete piece already read, if any (never waits).
    pub(crate) fn ready(&mut self) -> Option<Piece> {
        self.lines.next_piece()
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
pub(crate) fn json_pieces(text: &str, max: usize) -> Vec<String> {
    let room = max.saturating_sub(2).max(6);
    if text.len().saturating_mul(6) <= room {
        // Fits even if every byte needed the longest escape.
        return vec![json_text(text)];
    }
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

    /// Every piece of `data` pushed in chunks of `chunk` bytes, then finished.
    fn pieces(data: &[u8], max: usize, chunk: usize) -> Vec<Piece> {
        let mut lines = LineSplitter::new(max);
        let mut out = Vec::new();
        for part in data.chunks(chunk) {
            lines.push(part);
            while let Some(piece) = lines.next_piece() {
                out.push(piece);
            }
        }
        while let Some(piece) = lines.finish() {
            out.push(piece);
        }
        out
    }

    #[test]
    fn long_lines_come_in_parts_and_nothing_is_lost() {
        let data = b"short\r\n0123456789abcdef\nlast-without-newline";
        use Piece::*;
        for chunk in [1, 3, 4, 64] {
            assert_eq!(
                pieces(data, 10, chunk),
                [
                    Line("short".into()),
                    Part("0123456789".into()),
                    Line("abcdef".into()),
                    Part("last-witho".into()),
                    Line("ut-newline".into()),
                ],
                "chunk {chunk}"
            );
            // A line of exactly the limit is one line.
            assert_eq!(
                pieces(b"0123456789\n", 10, chunk),
                [Line("0123456789".into())]
            );
        }
        let bad = [0xff, 0xfe, b'o', b'k', b'\n'];
        assert_eq!(pieces(&bad, 64, 2), [Line("\u{fffd}\u{fffd}ok".into())]);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let line = "aé€😀".repeat(50);
        for max in 4..20 {
            for chunk in [1, 7, 1000] {
                let got = pieces(line.as_bytes(), max, chunk);
                let joined: String = got.iter().map(Piece::text).collect();
                assert_eq!(joined, line, "max {max}");
                assert!(got.iter().all(|p| p.text().len() <= max));
            }
        }
    }

    #[tokio::test]
    async fn catch_up_takes_what_the_pipe_holds_without_waiting() {
        let (read, write) = std::io::pipe().unwrap();
        let mut reader = PipeReader::new(read.into(), 64).unwrap();
        let mut write = File::from(OwnedFd::from(write));
        std::io::Write::write_all(&mut write, b"a\nb\npartial").unwrap();
        reader.catch_up().unwrap();
        assert_eq!(reader.ready(), Some(Piece::Line("a".into())));
        assert_eq!(reader.ready(), Some(Piece::Line("b".into())));
        assert_eq!(reader.ready(), None, "an unfinished line waits");
        std::io::Write::write_all(&mut write, b" line\n").unwrap();
        drop(write);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Piece::Line("partial line".into()))
        );
        assert_eq!(reader.next().await.unwrap(), None);
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

        #[test]
        fn any_bytes_in_any_chunks_come_back_whole(
            lines in proptest::collection::vec("[a-zé€😀]{0,40}", 0..8),
            max in 4usize..30,
            chunk in 1usize..50,
        ) {
            let data = lines.join("\n");
            let got = pieces(data.as_bytes(), max, chunk);
            let mut back = String::new();
            for piece in &got {
                prop_assert!(piece.text().len() <= max);
                back.push_str(piece.text());
                if matches!(piece, Piece::Line(_)) {
                    back.push('\n');
                }
            }
            let want = if data.is_empty() || data.ends_with('\n') {
                data.clone()
            } else {
                format!("{data}\n")
            };
            prop_assert_eq!(back, want);
        }
    }
}
