//! The byte layout of segment headers and log records (see `storage/FORMAT.md`).
//!
//! Encoding appends to a caller's buffer so that a whole batch becomes one
//! `write()`. Decoding borrows from the input (a mapped segment during
//! replay), checks the length bound before touching the payload and the CRC
//! before interpreting it, so a damaged record can never yield a key or value.

use crate::clock::UnixMillis;

/// Identifies a segment file; numbers grow and are never reused. The same
/// type names a segment on disk (file names, headers and the MANIFEST, which
/// store it in 64 bits) and in memory (each entry records the segment of its
/// set record in these 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SegmentId(pub u32);

impl SegmentId {
    /// The largest segment number. Numbers never wrap; past this the log
    /// refuses to grow.
    pub const MAX: SegmentId = SegmentId(u32::MAX);

    /// The next segment's number, or an error once numbers run out.
    pub fn next(self) -> crate::Result<SegmentId> {
        self.0.checked_add(1).map(SegmentId).ok_or(crate::Error::SegmentsExhausted)
    }

    /// The number as the on-disk fields (header, MANIFEST) store it.
    pub fn to_disk(self) -> u64 {
        u64::from(self.0)
    }

    /// A number read from disk; `None` if it is past [`SegmentId::MAX`].
    pub fn from_disk(n: u64) -> Option<SegmentId> {
        u32::try_from(n).ok().map(SegmentId)
    }

    /// How many segments run from `self` to `last`, both included.
    pub fn count_to(self, last: SegmentId) -> u64 {
        u64::from(last.0.saturating_sub(self.0)) + 1
    }
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A record's sequence number: one above the previous record's, across segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

pub const MAGIC: [u8; 8] = *b"CACHETLG";
/// Bumped on any change to the layout below. New segments are written with
/// this version; replay reads every version from `OLDEST_FORMAT_VERSION` on
/// (FORMAT.md, "Version history") and refuses others.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version replay still reads: version 1 is version 2 without
/// the record types 5 to 7.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

// The segment header, field by field (FORMAT.md): magic, version, reserved,
// segment number, reserved, CRC of everything before it.
const HEADER_VERSION: usize = MAGIC.len();
const HEADER_SEGMENT: usize = HEADER_VERSION + 4 + 4;
const HEADER_CRC: usize = HEADER_SEGMENT + 8 + 4;
pub const SEGMENT_HEADER_LEN: usize = HEADER_CRC + 4;

// A record: `length: u32 | crc32: u32`, then `length` bytes of `type | payload`.
const RECORD_LENGTH: usize = 0;
const RECORD_CRC: usize = RECORD_LENGTH + 4;
pub const RECORD_HEADER_LEN: usize = RECORD_CRC + 4;
/// The type byte, first of the body (the bytes `length` counts).
pub const RECORD_TYPE: usize = RECORD_HEADER_LEN;

// Payload fields, as offsets after the type byte. Every payload starts with
// `seq`; then, by type:
const SEQ: usize = 0;
const AFTER_SEQ: usize = SEQ + 8;
/// set: `expires: u64 | key_len: u32 | value_len: u32 | key | value`.
const SET_EXPIRES: usize = AFTER_SEQ;
const SET_KEY_LEN: usize = SET_EXPIRES + 8;
const SET_VALUE_LEN: usize = SET_KEY_LEN + 4;
pub(crate) const SET_FIXED: usize = SET_VALUE_LEN + 4;
/// delete: `key_len: u32 | key`.
const DELETE_KEY_LEN: usize = AFTER_SEQ;
const DELETE_FIXED: usize = DELETE_KEY_LEN + 4;
/// touch: `expires: u64 | key_len: u32 | key`.
const TOUCH_EXPIRES: usize = AFTER_SEQ;
const TOUCH_KEY_LEN: usize = TOUCH_EXPIRES + 8;
const TOUCH_FIXED: usize = TOUCH_KEY_LEN + 4;
/// clear: nothing after `seq`.
const CLEAR_FIXED: usize = AFTER_SEQ;
/// clear-prefix: `prefix_len: u32 | prefix`.
const CLEAR_PREFIX_LEN: usize = AFTER_SEQ;
const CLEAR_PREFIX_FIXED: usize = CLEAR_PREFIX_LEN + 4;
/// clear-db: `db: u8`.
const CLEAR_DB: usize = AFTER_SEQ;
const CLEAR_DB_FIXED: usize = CLEAR_DB + 1;
/// The largest `length` replay accepts: a 64 KiB key, a 1 GiB value and the
/// fixed fields. Checked before anything else about a record is believed.
pub const MAX_RECORD_LEN: u32 = (1 << 30) + (1 << 16) + 64;

const TYPE_SET: u8 = 1;
const TYPE_DELETE: u8 = 2;
const TYPE_TOUCH: u8 = 3;
const TYPE_CLEAR: u8 = 4;
/// Version 2: a set whose value is text (written through RESP); same layout
/// as `TYPE_SET`.
const TYPE_SET_TEXT: u8 = 5;
const TYPE_CLEAR_PREFIX: u8 = 6;
const TYPE_CLEAR_DB: u8 = 7;

/// How a value was written, which decides the counter commands that apply
/// to it: the Rust client's `incr` to a MessagePack integer, RESP's `INCR`
/// to decimal text. A counter of one kind is "not an integer" to the other,
/// so no number is ever read in the wrong encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Written by the Rust client (tarpc): MessagePack.
    #[default]
    MessagePack,
    /// Written through RESP: bytes as the client gave them.
    Text,
}

/// One logged change. `expires` of `UnixMillis(0)` means never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Set {
        key: &'a [u8],
        value: &'a [u8],
        expires: UnixMillis,
        encoding: Encoding,
    },
    Delete {
        key: &'a [u8],
    },
    Touch {
        key: &'a [u8],
        expires: UnixMillis,
    },
    Clear,
    /// Removes every key that starts with `prefix` (`Cache::clear_prefix`).
    ClearPrefix {
        prefix: &'a [u8],
    },
    /// Removes every key of RESP database `db` (`FLUSHDB`; see `keyspace`).
    ClearDb {
        db: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record header runs past the end of the file")]
    Truncated,
    #[error("record length {0} is zero or beyond the limit or the file")]
    BadLength(u32),
    #[error("record checksum mismatch")]
    BadCrc,
    #[error("unknown record type {0}")]
    BadType(u8),
    #[error("record payload malformed: {0}")]
    BadPayload(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment header is {0} bytes, shorter than {SEGMENT_HEADER_LEN}")]
    Short(usize),
    #[error("not a cachet segment (bad magic)")]
    Magic,
    #[error("segment format version {found}, this build reads version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("segment header checksum mismatch")]
    Crc,
    #[error("segment header names segment {found}, file name says {expected}")]
    WrongSegment { found: u64, expected: u64 },
}

/// The CRC is seeded with the segment number so that a record copied from
/// another segment (a stale block, a misdirected write) does not validate.
fn crc_seed(seg: SegmentId) -> u32 {
    // (Identical, for every number up to SegmentId::MAX, to the first
    // version's fold of a 64-bit number: its high half is zero.)
    seg.0 ^ 0x5a5a_5a5a
}

pub fn segment_header(seg: SegmentId) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..HEADER_VERSION].copy_from_slice(&MAGIC);
    h[HEADER_VERSION..HEADER_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[HEADER_SEGMENT..HEADER_SEGMENT + 8].copy_from_slice(&seg.to_disk().to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_CRC]);
    h[HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns the format version it was written in.
pub fn check_segment_header(bytes: &[u8], expected: SegmentId) -> Result<u32, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short(bytes.len()));
    }
    if bytes[..HEADER_VERSION] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32_at(bytes, HEADER_VERSION);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(HeaderError::Version { found: version });
    }
    if crc32fast::hash(&bytes[..HEADER_CRC]) != u32_at(bytes, HEADER_CRC) {
        return Err(HeaderError::Crc);
    }
    let found = u64_at(bytes, HEADER_SEGMENT);
    if found != expected.to_disk() {
        return Err(HeaderError::WrongSegment { found, expected: expected.to_disk() });
    }
    Ok(version)
}

/// Appends one record to `buf`; returns the bytes it took.
pub fn encode(buf: &mut Vec<u8>, seg: SegmentId, seq: Seq, rec: &Record<'_>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    match *rec {
        Record::Set { key, value, expires, encoding } => {
            buf.push(match encoding {
                Encoding::MessagePack => TYPE_SET,
                Encoding::Text => TYPE_SET_TEXT,
            });
            buf.extend_from_slice(&seq.0.to_le_bytes());
            buf.extend_from_slice(&expires.0.to_le_bytes());
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
            buf.extend_from_slice(value);
        }
        Record::Delete { key } => {
            buf.push(TYPE_DELETE);
            buf.extend_from_slice(&seq.0.to_le_bytes());
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
        }
        Record::Touch { key, expires } => {
            buf.push(TYPE_TOUCH);
            buf.extend_from_slice(&seq.0.to_le_bytes());
            buf.extend_from_slice(&expires.0.to_le_bytes());
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
        }
        Record::Clear => {
            buf.push(TYPE_CLEAR);
            buf.extend_from_slice(&seq.0.to_le_bytes());
        }
        Record::ClearPrefix { prefix } => {
            buf.push(TYPE_CLEAR_PREFIX);
            buf.extend_from_slice(&seq.0.to_le_bytes());
            buf.extend_from_slice(&(prefix.len() as u32).to_le_bytes());
            buf.extend_from_slice(prefix);
        }
        Record::ClearDb { db } => {
            buf.push(TYPE_CLEAR_DB);
            buf.extend_from_slice(&seq.0.to_le_bytes());
            buf.push(db);
        }
    }
    let body = start + RECORD_HEADER_LEN;
    let len = (buf.len() - body) as u32;
    let mut crc = crc32fast::Hasher::new_with_initial(crc_seed(seg));
    crc.update(&buf[body..]);
    let crc = crc.finalize();
    buf[start + RECORD_LENGTH..start + RECORD_CRC].copy_from_slice(&len.to_le_bytes());
    buf[start + RECORD_CRC..start + RECORD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

/// The encoded size of a set record, without encoding it.
pub fn set_record_len(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER_LEN + 1 + SET_FIXED + key_len + value_len
}

/// Decodes the record at the start of `buf`; returns it with its sequence
/// number and the bytes it took.
pub fn decode(buf: &[u8], seg: SegmentId) -> Result<(Seq, Record<'_>, usize), RecordError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Truncated);
    }
    let len = u32_at(buf, RECORD_LENGTH);
    let available = buf.len() - RECORD_HEADER_LEN;
    if len == 0 || len > MAX_RECORD_LEN || len as usize > available {
        return Err(RecordError::BadLength(len));
    }
    let body = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    let mut crc = crc32fast::Hasher::new_with_initial(crc_seed(seg));
    crc.update(body);
    if crc.finalize() != u32_at(buf, RECORD_CRC) {
        return Err(RecordError::BadCrc);
    }
    let (seq, rec) = decode_body(body)?;
    Ok((seq, rec, RECORD_HEADER_LEN + len as usize))
}

/// The sequence number of a record at the start of `buf` if its length is
/// in bounds and fits, and its layout (type and payload lengths) adds up:
/// everything `decode` checks except the CRC. Costs a few comparisons, so a
/// scan may try it at every offset and pay for a CRC only where it passes.
pub fn plausible_seq(buf: &[u8]) -> Option<u64> {
    if buf.len() < RECORD_HEADER_LEN {
        return None;
    }
    let len = u32_at(buf, RECORD_LENGTH);
    if len == 0 || len > MAX_RECORD_LEN || len as usize > buf.len() - RECORD_HEADER_LEN {
        return None;
    }
    decode_body(&buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize]).ok().map(|(seq, _)| seq.0)
}

/// The smallest encoded record (a `clear`): header, type and sequence.
pub const MIN_RECORD_LEN: usize = RECORD_HEADER_LEN + 1 + CLEAR_FIXED;

/// Whether a record's type byte says `set` (counted to size the index).
pub fn is_set(type_byte: u8) -> bool {
    type_byte == TYPE_SET || type_byte == TYPE_SET_TEXT
}

/// The length field of the record at the start of `buf` (which holds at
/// least a record header).
pub fn length_field(buf: &[u8]) -> usize {
    u32_at(buf, RECORD_LENGTH) as usize
}

fn decode_body(body: &[u8]) -> Result<(Seq, Record<'_>), RecordError> {
    let kind = body[0];
    let p = &body[1..];
    let need = |n: usize| {
        if p.len() < n { Err(RecordError::BadPayload("fixed fields cut short")) } else { Ok(()) }
    };
    match kind {
        TYPE_SET | TYPE_SET_TEXT => {
            need(SET_FIXED)?;
            let expires = UnixMillis(u64_at(p, SET_EXPIRES));
            let klen = u32_at(p, SET_KEY_LEN) as usize;
            let vlen = u32_at(p, SET_VALUE_LEN) as usize;
            if p.len() - SET_FIXED != klen.saturating_add(vlen) {
                return Err(RecordError::BadPayload("set lengths disagree with record length"));
            }
            let (key, value) = p[SET_FIXED..].split_at(klen);
            let encoding = if kind == TYPE_SET_TEXT { Encoding::Text } else { Encoding::MessagePack };
            Ok((seq(p), Record::Set { key, value, expires, encoding }))
        }
        TYPE_DELETE => {
            need(DELETE_FIXED)?;
            if p.len() - DELETE_FIXED != u32_at(p, DELETE_KEY_LEN) as usize {
                return Err(RecordError::BadPayload("delete key length disagrees with record length"));
            }
            Ok((seq(p), Record::Delete { key: &p[DELETE_FIXED..] }))
        }
        TYPE_TOUCH => {
            need(TOUCH_FIXED)?;
            let expires = UnixMillis(u64_at(p, TOUCH_EXPIRES));
            if p.len() - TOUCH_FIXED != u32_at(p, TOUCH_KEY_LEN) as usize {
                return Err(RecordError::BadPayload("touch key length disagrees with record length"));
            }
            Ok((seq(p), Record::Touch { key: &p[TOUCH_FIXED..], expires }))
        }
        TYPE_CLEAR => {
            if p.len() != CLEAR_FIXED {
                return Err(RecordError::BadPayload("clear record has the wrong length"));
            }
            Ok((seq(p), Record::Clear))
        }
        TYPE_CLEAR_PREFIX => {
            need(CLEAR_PREFIX_FIXED)?;
            if p.len() - CLEAR_PREFIX_FIXED != u32_at(p, CLEAR_PREFIX_LEN) as usize {
                return Err(RecordError::BadPayload("clear-prefix length disagrees with record length"));
            }
            Ok((seq(p), Record::ClearPrefix { prefix: &p[CLEAR_PREFIX_FIXED..] }))
        }
        TYPE_CLEAR_DB => {
            if p.len() != CLEAR_DB_FIXED {
                return Err(RecordError::BadPayload("clear-db record has the wrong length"));
            }
            Ok((seq(p), Record::ClearDb { db: p[CLEAR_DB] }))
        }
        other => Err(RecordError::BadType(other)),
    }
}

/// The sequence number of a payload whose fixed fields were checked.
fn seq(payload: &[u8]) -> Seq {
    Seq(u64_at(payload, SEQ))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("slice of 4"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("slice of 8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(rec: Record<'_>) {
        let mut buf = Vec::new();
        let n = encode(&mut buf, SegmentId(7), Seq(42), &rec);
        assert_eq!(n, buf.len());
        let (seq, back, used) = decode(&buf, SegmentId(7)).unwrap();
        assert_eq!((seq, back, used), (Seq(42), rec, n));
    }

    #[test]
    fn every_record_type_roundtrips() {
        roundtrip(Record::Set { key: b"k", value: b"value", expires: UnixMillis(99), encoding: Encoding::MessagePack });
        roundtrip(Record::Set { key: b"", value: b"", expires: UnixMillis(0), encoding: Encoding::MessagePack });
        roundtrip(Record::Set { key: b"t", value: b"12", expires: UnixMillis(5), encoding: Encoding::Text });
        roundtrip(Record::ClearPrefix { prefix: b"app:" });
        roundtrip(Record::ClearPrefix { prefix: b"" });
        roundtrip(Record::ClearDb { db: 7 });
        roundtrip(Record::Delete { key: b"gone" });
        roundtrip(Record::Touch { key: b"t", expires: UnixMillis(5) });
        roundtrip(Record::Clear);
    }

    #[test]
    fn set_record_len_matches_encoding() {
        let mut buf = Vec::new();
        let rec = Record::Set {
            key: b"0123456789abcdef",
            value: &[1; 100],
            expires: UnixMillis(1),
            encoding: Encoding::MessagePack,
        };
        assert_eq!(encode(&mut buf, SegmentId(1), Seq(1), &rec), set_record_len(16, 100));
    }

    #[test]
    fn a_record_from_another_segment_fails_its_crc() {
        let mut buf = Vec::new();
        encode(&mut buf, SegmentId(1), Seq(1), &Record::Delete { key: b"k" });
        assert_eq!(decode(&buf, SegmentId(2)).unwrap_err(), RecordError::BadCrc);
    }

    #[test]
    fn zeroed_space_never_parses() {
        assert_eq!(decode(&[0u8; 64], SegmentId(0)).unwrap_err(), RecordError::BadLength(0));
    }

    #[test]
    fn length_is_bounded_before_reading() {
        let mut buf = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1];
        assert_eq!(decode(&buf, SegmentId(0)).unwrap_err(), RecordError::BadLength(u32::MAX));
        buf[0..4].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(decode(&buf, SegmentId(0)).unwrap_err(), RecordError::BadLength(100));
        assert_eq!(decode(&buf[..5], SegmentId(0)).unwrap_err(), RecordError::Truncated);
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            SegmentId(3),
            Seq(9),
            &Record::Set { key: b"key", value: b"val", expires: UnixMillis(1), encoding: Encoding::MessagePack },
        );
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad, SegmentId(3)).is_err(), "flip at byte {i} bit {bit} parsed");
            }
        }
    }

    #[test]
    fn unknown_type_with_valid_crc_is_rejected() {
        let mut buf = Vec::new();
        encode(&mut buf, SegmentId(0), Seq(1), &Record::Clear);
        buf[8] = 77;
        let mut crc = crc32fast::Hasher::new_with_initial(crc_seed(SegmentId(0)));
        crc.update(&buf[8..]);
        let c = crc.finalize();
        buf[4..8].copy_from_slice(&c.to_le_bytes());
        assert_eq!(decode(&buf, SegmentId(0)).unwrap_err(), RecordError::BadType(77));
    }

    #[test]
    fn header_checks() {
        let h = segment_header(SegmentId(5));
        assert_eq!(check_segment_header(&h, SegmentId(5)), Ok(FORMAT_VERSION));
        assert_eq!(check_segment_header(&h, SegmentId(6)), Err(HeaderError::WrongSegment { found: 5, expected: 6 }));
        assert_eq!(check_segment_header(&h[..10], SegmentId(5)), Err(HeaderError::Short(10)));
        let mut v = h;
        v[8] = 9;
        assert_eq!(check_segment_header(&v, SegmentId(5)), Err(HeaderError::Version { found: 9 }));
        let mut m = h;
        m[0] = b'X';
        assert_eq!(check_segment_header(&m, SegmentId(5)), Err(HeaderError::Magic));
    }
}
