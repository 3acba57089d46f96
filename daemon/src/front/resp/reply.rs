//! RESP replies, written for the protocol version the connection chose
//! (`HELLO 2` or `HELLO 3`): RESP3's null, map and verbatim string fall back to
//! RESP2's forms.

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`, `+PONG`, `+QUEUED`.
    Simple(&'static str),
    /// `-ERR …`, `-NOAUTH …`: the text after the `-`.
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: RESP3 `_`, RESP2 `$-1`.
    Null,
    Array(Vec<Value>),
    /// RESP3 `%`, RESP2 a flat array of keys and values.
    Map(Vec<(Value, Value)>),
    /// A large text (`INFO`): RESP3 verbatim string, RESP2 bulk.
    Verbatim(String),
}

impl Value {
    pub fn bulk(b: impl Into<Bytes>) -> Value {
        Value::Bulk(b.into())
    }

    pub fn text(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    pub fn err(s: impl Into<String>) -> Value {
        Value::Error(s.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Appends the wire form of the value for protocol version `proto`.
    pub fn write(&self, out: &mut Vec<u8>, proto: u8) {
        let resp3 = proto >= 3;
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => {
                // An error is one line: a newline inside would end it early.
                let clean: String = s.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
                line(out, b'-', clean.as_bytes());
            }
            Value::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Value::Bulk(b) => bulk(out, b),
            Value::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Value::Null => out.extend_from_slice(b"$-1\r\n"),
            Value::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for v in items {
                    v.write(out, proto);
                }
            }
            Value::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.write(out, proto);
                    v.write(out, proto);
                }
            }
            Value::Verbatim(s) if resp3 => {
                let body = format!("txt:{s}");
                line(out, b'=', body.len().to_string().as_bytes());
                out.extend_from_slice(body.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Value::Verbatim(s) => bulk(out, s.as_bytes()),
        }
    }
}

fn line(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    line(out, b'$', b.len().to_string().as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(v: &Value, proto: u8) -> String {
        let mut out = Vec::new();
        v.write(&mut out, proto);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_in_both_protocols() {
        assert_eq!(wire(&Value::Simple("OK"), 2), "+OK\r\n");
        assert_eq!(wire(&Value::err("ERR bad\r\nthing"), 2), "-ERR bad  thing\r\n");
        assert_eq!(wire(&Value::Int(-3), 3), ":-3\r\n");
        assert_eq!(wire(&Value::text("hi"), 2), "$2\r\nhi\r\n");
        assert_eq!(wire(&Value::Null, 2), "$-1\r\n");
        assert_eq!(wire(&Value::Null, 3), "_\r\n");
        let m = Value::Map(vec![(Value::text("a"), Value::Int(1))]);
        assert_eq!(wire(&m, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(wire(&m, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(wire(&Value::Verbatim("x".into()), 3), "=5\r\ntxt:x\r\n");
    }
}
