//! Rebuilding the state from the log, and the offline check and repair.
//!
//! Rules (each has a test):
//! - Segments below the manifest's floor are dead and ignored.
//! - Records apply in order; each sequence number is one above the last.
//! - A set or touch whose deadline has passed is applied like any other (it
//!   is never skipped, or an older value would come back); what is expired
//!   once the whole log is applied is dropped.
//! - A bad record at the end of the newest segment, with no valid record
//!   after it, is a torn write: it is cut off and the log opens.
//! - Any other bad record is corruption: opening fails naming the file, the
//!   offset and the last good sequence number. Nothing is skipped over.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::{Advice, Mmap, MmapOptions};

use crate::error::{CorruptReason, Error, Result};
use crate::record::{self, RECORD_HEADER_LEN, Record, SEGMENT_HEADER_LEN, SegmentId};
use crate::segment::{list_segments, read_floor, segment_path};
use crate::state::State;

/// Progress reported while replaying.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub records: u64,
}

/// What replay found, for the log line and the writer.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    pub last_seq: u64,
    pub torn: Option<TornTail>,
    pub elapsed_ms: u64,
    /// The newest segment and the length of its valid prefix.
    pub(crate) newest: Option<(SegmentId, u64)>,
    pub(crate) floor: SegmentId,
}

/// A torn write cut off the end of the newest segment.
#[derive(Clone, Debug)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_dropped: u64,
}

/// Where the first bad spot is, as found by `scan`.
pub(crate) struct BadSpot {
    pub(crate) segment: SegmentId,
    pub(crate) offset: u64,
    pub(crate) reason: CorruptReason,
    pub(crate) last_good_seq: u64,
}

/// What `scan` reports to its caller as it goes.
pub(crate) enum Event<'a> {
    /// Before any record: how many set records the log holds.
    Presize(usize),
    Record(SegmentId, Record<'a>),
    Progress(Progress),
}

type Map = (SegmentId, PathBuf, Option<Mmap>);

/// Walks the log in order, handing each record to `visit`. Stops at the
/// first bad record: returns `Err(BadSpot)` for corruption, and reports a
/// torn tail of the newest segment in the report.
///
/// Checking (page faults, CRCs, decoding) runs on a second thread a few
/// thousand records ahead of `visit`, which applies them: on a 2-core machine
/// that takes about a third off the time to open.
pub(crate) fn scan(dir: &Path, mut visit: impl FnMut(Event<'_>)) -> Result<std::result::Result<ReplayReport, BadSpot>> {
    let started = Instant::now();
    let floor = read_floor(dir)?;
    let ids: Vec<SegmentId> = list_segments(dir)?.into_iter().filter(|id| *id >= floor).collect();
    let mut maps: Vec<Map> = Vec::with_capacity(ids.len());
    for &id in &ids {
        let path = segment_path(dir, id);
        let file = File::open(&path).map_err(Error::io("opening segment", &path))?;
        let len = file.metadata().map_err(Error::io("reading metadata of", &path))?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the data directory is locked by this process (or opened
            // by an offline tool while no daemon runs), so nothing changes the
            // file while it is mapped; every read is bounds-checked.
            let map = unsafe { MmapOptions::new().map(&file) }.map_err(Error::io("mapping segment", &path))?;
            let _ = map.advise(Advice::Sequential);
            Some(map)
        };
        maps.push((id, path, map));
    }
    const CHUNK: usize = 4096;
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Event<'_>>>(4);
    let mut result = std::thread::scope(|s| {
        let maps = &maps;
        let checker = s.spawn(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            let result = verify(maps, floor, |ev| {
                chunk.push(ev);
                if chunk.len() == CHUNK {
                    let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                }
            });
            let _ = tx.send(chunk);
            result
        });
        for chunk in rx {
            for ev in chunk {
                visit(ev);
            }
        }
        checker.join().expect("replay checker thread panicked")
    });
    if let Ok(report) = &mut result {
        report.elapsed_ms = started.elapsed().as_millis() as u64;
    }
    Ok(result)
}

/// Checks every record of `maps` in order and emits what is good.
fn verify<'a>(
    maps: &'a [Map],
    floor: SegmentId,
    mut emit: impl FnMut(Event<'a>),
) -> std::result::Result<ReplayReport, BadSpot> {
    let mut report = ReplayReport { floor, ..ReplayReport::default() };
    let bytes_total: u64 = maps.iter().map(|(_, _, m)| m.as_ref().map_or(0, |m| m.len() as u64)).sum();
    emit(Event::Presize(count_set_records(maps)));
    let mut last_seq: Option<u64> = None;
    let mut bytes_done = 0u64;
    let mut records = 0u64;
    let newest = maps.last().map(|(id, _, _)| *id);
    for (id, path, map) in maps {
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let is_newest = Some(*id) == newest;
        let last_good = last_seq.unwrap_or(0);
        if let Err(e) = record::check_segment_header(bytes, *id) {
            // A crash while creating the newest segment can leave its header
            // short; nothing in it was ever acknowledged.
            if is_newest && matches!(e, record::HeaderError::Short(_)) && is_zero_or_header_prefix(bytes, *id) {
                report.torn = Some(TornTail { file: path.clone(), offset: 0, bytes_dropped: bytes.len() as u64 });
                report.newest = None;
                report.segments += 1;
                continue;
            }
            return Err(BadSpot { segment: *id, offset: 0, reason: e.into(), last_good_seq: last_good });
        }
        let mut pos = SEGMENT_HEADER_LEN;
        while pos < bytes.len() {
            match record::decode(&bytes[pos..], *id) {
                Ok((seq, rec, used)) => {
                    if let Some(prev) = last_seq
                        && seq.0 != prev + 1
                    {
                        return Err(BadSpot {
                            segment: *id,
                            offset: pos as u64,
                            reason: CorruptReason::Sequence { found: seq.0, expected: prev + 1 },
                            last_good_seq: prev,
                        });
                    }
                    emit(Event::Record(*id, rec));
                    last_seq = Some(seq.0);
                    records += 1;
                    pos += used;
                    if records.is_multiple_of(1_000_000) {
                        emit(Event::Progress(Progress { bytes_done: bytes_done + pos as u64, bytes_total, records }));
                    }
                }
                Err(err) => {
                    let last_good = last_seq.unwrap_or(0);
                    if is_newest && !valid_record_after(bytes, pos, *id, last_good) {
                        report.torn = Some(TornTail {
                            file: path.clone(),
                            offset: pos as u64,
                            bytes_dropped: (bytes.len() - pos) as u64,
                        });
                        break;
                    }
                    return Err(BadSpot {
                        segment: *id,
                        offset: pos as u64,
                        reason: err.into(),
                        last_good_seq: last_good,
                    });
                }
            }
        }
        report.segments += 1;
        report.newest = Some((*id, pos.min(bytes.len()) as u64));
        bytes_done += bytes.len() as u64;
    }
    emit(Event::Progress(Progress { bytes_done: bytes_total, bytes_total, records }));
    report.records = records;
    report.bytes = bytes_total;
    report.last_seq = last_seq.unwrap_or(0);
    Ok(report)
}

fn is_zero_or_header_prefix(bytes: &[u8], id: SegmentId) -> bool {
    let header = record::segment_header(id);
    bytes.iter().zip(header.iter()).all(|(a, b)| a == b) || bytes.iter().all(|b| *b == 0)
}

/// Whether any offset after `pos` holds a record that validates and comes
/// after `last_good`: if so, the bad record at `pos` is not a torn tail.
fn valid_record_after(bytes: &[u8], pos: usize, id: SegmentId, last_good: u64) -> bool {
    (pos + 1..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1))
        .any(|p| matches!(record::decode(&bytes[p..], id), Ok((seq, _, _)) if seq.0 > last_good))
}

/// A quick pass that hops from length to length counting set records, to
/// size the index once instead of growing it during replay.
fn count_set_records(maps: &[Map]) -> usize {
    let mut sets = 0usize;
    for (_, _, map) in maps {
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let mut pos = SEGMENT_HEADER_LEN;
        while pos + RECORD_HEADER_LEN < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            if len == 0 || pos + RECORD_HEADER_LEN + len > bytes.len() {
                break;
            }
            sets += (bytes[pos + RECORD_HEADER_LEN] == 1) as usize;
            pos += RECORD_HEADER_LEN + len;
        }
    }
    sets
}

/// Replays `dir` into `state` at time `now`.
pub(crate) fn replay_into(
    dir: &Path,
    state: &mut State,
    now: u64,
    mut progress: impl FnMut(Progress),
) -> Result<ReplayReport> {
    let scanned = scan(dir, |event| match event {
        Event::Presize(n) => state.reserve(n),
        Event::Record(seg, rec) => state.replay(&rec, seg.0 as u32, now),
        Event::Progress(p) => progress(p),
    })?;
    match scanned {
        Ok(report) => {
            state.finish_replay(now);
            Ok(report)
        }
        Err(bad) => Err(corrupt(dir, bad)),
    }
}

pub(crate) fn corrupt(dir: &Path, bad: BadSpot) -> Error {
    Error::Corrupt {
        dir: dir.to_path_buf(),
        file: segment_path(dir, bad.segment),
        offset: bad.offset,
        last_good_seq: bad.last_good_seq,
        reason: bad.reason,
    }
}

/// What `check` found in a data directory.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub replay: ReplayReport,
    pub live_entries: u64,
    /// Bytes of the set records that hold live entries.
    pub live_bytes: u64,
    /// The rest of the log: overwritten, deleted and expired records.
    pub dead_bytes: u64,
    /// Entries whose deadline had passed when the check ran.
    pub expired_entries: u64,
}

/// Verifies a data directory offline without changing it: every record's
/// CRC, sequence and layout. A torn tail is reported but is not an error (it
/// is what a crash leaves and opening cuts it off).
pub fn check(dir: &Path) -> Result<CheckReport> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock::new()).0;
    let mut state = State::new(
        crate::state::Limits { max_key_bytes: usize::MAX, max_value_bytes: usize::MAX, ..Default::default() },
        now,
    );
    let replay = replay_into(dir, &mut state, now, |_| {})?;
    let live_bytes = state.live_log_bytes();
    Ok(CheckReport {
        live_entries: state.len() as u64,
        live_bytes,
        dead_bytes: replay.bytes.saturating_sub(live_bytes),
        expired_entries: state.stats().expired,
        replay,
    })
}

/// What `repair` did.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    /// `None` when the log was sound and nothing was changed.
    pub cut: Option<Cut>,
}

#[derive(Clone, Debug)]
pub struct Cut {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_dropped: u64,
    pub last_good_seq: u64,
    /// Copies of the damaged file and of every later segment, moved aside.
    pub backups: Vec<PathBuf>,
}

/// Cuts a corrupt log back to its last good record: the damaged segment is
/// copied aside and truncated at the bad spot, and every later segment is
/// moved aside (they follow a gap, so applying them could resurrect stale
/// values). Run only while no daemon uses the directory (the lock is taken).
pub fn repair(dir: &Path) -> Result<RepairReport> {
    let _lock = crate::engine::lock_dir(dir)?;
    let scanned = scan(dir, |_| {})?;
    let bad = match scanned {
        Ok(_) => return Ok(RepairReport { cut: None }),
        Err(bad) => bad,
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let damaged = segment_path(dir, bad.segment);
    let backup = |p: &Path| PathBuf::from(format!("{}.corrupt-{stamp}", p.display()));
    let mut backups = Vec::new();
    let len = std::fs::metadata(&damaged).map_err(Error::io("reading metadata of", &damaged))?.len();
    let copy = backup(&damaged);
    std::fs::copy(&damaged, &copy).map_err(Error::io("backing up", &damaged))?;
    backups.push(copy);
    if bad.offset == 0 {
        // The header itself is bad: the whole segment goes aside.
        std::fs::remove_file(&damaged).map_err(Error::io("removing", &damaged))?;
    } else {
        let f = std::fs::OpenOptions::new().write(true).open(&damaged).map_err(Error::io("opening", &damaged))?;
        f.set_len(bad.offset).map_err(Error::io("truncating", &damaged))?;
        f.sync_all().map_err(Error::io("syncing", &damaged))?;
    }
    for id in list_segments(dir)?.into_iter().filter(|id| *id > bad.segment) {
        let path = segment_path(dir, id);
        let to = backup(&path);
        std::fs::rename(&path, &to).map_err(Error::io("moving aside", &path))?;
        backups.push(to);
    }
    crate::segment::sync_dir(dir)?;
    Ok(RepairReport {
        cut: Some(Cut {
            file: damaged,
            offset: bad.offset,
            bytes_dropped: len - bad.offset,
            last_good_seq: bad.last_good_seq,
            backups,
        }),
    })
}
