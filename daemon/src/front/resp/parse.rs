//! The RESP request parser: multibulk (`*N\r\n$len\r\narg\r\n…`) as every
//! client sends, and inline commands (`PING\r\n`) as typed into `nc` or
//! `telnet`. Lengths are checked before anything is allocated, and a
//! malformed request is an error the connection closes on, as in Redis.

use bytes::{Buf, Bytes, BytesMut};

/// Bounds on one request.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The longest argument (bulk string).
    pub max_bulk: usize,
    /// The most arguments in one command.
    pub max_args: usize,
    /// The most bytes one command may take on the wire.
    pub max_command: usize,
}

/// The longest inline command, as Redis's `PROTO_INLINE_MAX_SIZE`.
const MAX_INLINE: usize = 64 << 10;

/// Takes the first complete command off `buf`: `Ok(None)` if more bytes are
/// needed, `Err` (Redis's `Protocol error: …` text) if the request is
/// malformed or over a bound. Empty commands (a blank inline line, `*0`)
/// are skipped.
pub fn next_command(buf: &mut BytesMut, bounds: &Bounds) -> Result<Option<Vec<Bytes>>, String> {
    loop {
        let Some(&first) = buf.first() else { return Ok(None) };
        let parsed = if first == b'*' { multibulk(buf, bounds)? } else { inline(buf)? };
        match parsed {
            Some(Parsed::Spans(used, spans)) => {
                // The arguments are slices of the request's own bytes: no copy.
                let frame = buf.split_to(used).freeze();
                if !spans.is_empty() {
                    return Ok(Some(spans.into_iter().map(|(a, b)| frame.slice(a..b)).collect()));
                }
            }
            Some(Parsed::Owned(used, args)) => {
                buf.advance(used);
                if !args.is_empty() {
                    return Ok(Some(args.into_iter().map(Bytes::from).collect()));
                }
            }
            None => {
                if buf.len() > bounds.max_command {
                    return Err(format!(
                        "Protocol error: command over {} bytes (the server's --max-value-bytes bounds it)",
                        bounds.max_command
                    ));
                }
                return Ok(None);
            }
        }
    }
}

/// The position of the `\r\n` that ends the line starting at `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

/// A decimal number as RESP headers write it.
fn number(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

type Spans = Vec<(usize, usize)>;

/// A complete command: its length on the wire and its arguments, as spans
/// of the buffer (multibulk) or unescaped copies (inline).
enum Parsed {
    Spans(usize, Spans),
    Owned(usize, Vec<Vec<u8>>),
}

fn multibulk(buf: &[u8], bounds: &Bounds) -> Result<Option<Parsed>, String> {
    let Some(end) = line_end(buf, 1) else {
        return if buf.len() > MAX_INLINE {
            Err("Protocol error: too big mbulk count string".into())
        } else {
            Ok(None)
        };
    };
    let count = number(&buf[1..end]).ok_or("Protocol error: invalid multibulk length")?;
    if count > bounds.max_args as i64 {
        return Err(format!(
            "Protocol error: invalid multibulk length ({count} arguments; at most {})",
            bounds.max_args
        ));
    }
    let mut at = end + 2;
    if count <= 0 {
        return Ok(Some(Parsed::Spans(at, Vec::new())));
    }
    // Spans are allocated as arguments arrive, never from the count alone.
    let mut args = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(format!("Protocol error: expected '$', got '{}'", char::from(buf[at]).escape_default()));
        }
        let Some(end) = line_end(buf, at + 1) else {
            return if buf.len() - at > 32 { Err("Protocol error: invalid bulk length".into()) } else { Ok(None) };
        };
        let len = number(&buf[at + 1..end]).filter(|n| *n >= 0).ok_or("Protocol error: invalid bulk length")?;
        if len as u64 > bounds.max_bulk as u64 {
            return Err(format!(
                "Protocol error: invalid bulk length ({len} bytes; this server takes at most {} per argument, see --max-value-bytes)",
                bounds.max_bulk
            ));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err("Protocol error: bulk string not followed by CRLF".into());
        }
        args.push((start, stop));
        at = stop + 2;
    }
    Ok(Some(Parsed::Spans(at, args)))
}

/// An inline command: arguments separated by spaces, with Redis's quoting
/// (`"…"` with `\n`, `\t`, `\xHH` escapes, `'…'` taken literally).
fn inline(buf: &[u8]) -> Result<Option<Parsed>, String> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE { Err("Protocol error: too big inline request".into()) } else { Ok(None) };
    };
    let line_len = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    let args = split_inline(&buf[..line_len]).ok_or("Protocol error: unbalanced quotes in request")?;
    Ok(Some(Parsed::Owned(nl + 1, args)))
}

/// Splits an inline line as Redis's `sdssplitargs`; `None` on unbalanced quotes.
fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let c = *line.get(i)?;
                    match c {
                        b'\\' if i + 3 < line.len() && line[i + 1] == b'x' => {
                            let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok();
                            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                                Some(b) => {
                                    cur.push(b);
                                    i += 4;
                                }
                                None => {
                                    cur.push(b'x');
                                    i += 2;
                                }
                            }
                        }
                        b'\\' if i + 1 < line.len() => {
                            cur.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            // A closing quote must be followed by a space or the end.
                            if i < line.len() && !line[i].is_ascii_whitespace() {
                                return None;
                            }
                            break;
                        }
                        _ => {
                            cur.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let c = *line.get(i)?;
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        cur.push(b'\'');
                        i += 2;
                    } else if c == b'\'' {
                        i += 1;
                        if i < line.len() && !line[i].is_ascii_whitespace() {
                            return None;
                        }
                        break;
                    } else {
                        cur.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    cur.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds { max_bulk: 1 << 20, max_args: 1 << 20, max_command: 4 << 20 };

    fn all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, String> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(cmd) = next_command(&mut buf, &BOUNDS)? {
            out.push(cmd.into_iter().map(|b| b.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_inline_commands() {
        assert_eq!(
            all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n").unwrap(),
            vec![vec![b"GET".to_vec(), b"k".to_vec()], vec![b"PING".to_vec()]]
        );
        assert_eq!(all(b"PING\r\n").unwrap(), vec![vec![b"PING".to_vec()]]);
        assert_eq!(
            all(b"set k \"a b\\n\" 'c d'\n").unwrap(),
            vec![vec![b"set".to_vec(), b"k".to_vec(), b"a b\n".to_vec(), b"c d".to_vec()]]
        );
        assert_eq!(all(b"\r\n\r\n*0\r\nPING\r\n").unwrap(), vec![vec![b"PING".to_vec()]]);
        assert_eq!(all(b"*1\r\n$0\r\n\r\n").unwrap(), vec![vec![Vec::<u8>::new()]]);
    }

    #[test]
    fn incomplete_input_waits_at_every_cut() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(next_command(&mut buf, &BOUNDS).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n:1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$abc\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"set k \"unterminated\r\n",
            b"set k \"a\"b\r\n",
        ] {
            let e = all(bad).unwrap_err();
            assert!(e.starts_with("Protocol error"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let e = all(b"*1\r\n$99999999999\r\n").unwrap_err();
        assert!(e.contains("invalid bulk length"), "{e}");
        let e = all(b"*9999999999\r\n").unwrap_err();
        assert!(e.contains("multibulk length"), "{e}");
        // A huge declared count with few arguments present allocates little
        // and just waits.
        let mut buf = BytesMut::from(&b"*1000000\r\n$1\r\na\r\n"[..]);
        assert_eq!(next_command(&mut buf, &BOUNDS).unwrap(), None);
    }
}
