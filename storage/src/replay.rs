//! Rebuilding the state from the log, and the offline check and repair.
//!
//! Rules (each has a test; FORMAT.md names it):
//! - The MANIFEST says where the log starts (floor segment, the sequence
//!   number of its first record) and the newest segment created. The
//!   segments present must agree: the floor segment exists, the segments
//!   from it on are numbered without a gap up to at least the newest, and
//!   the first record carries the first sequence number. Otherwise opening
//!   fails and nothing is deleted.
//! - Segments below the floor are dead and ignored (and removed on open,
//!   once the segments have agreed with the MANIFEST).
//! - Records apply in order; each sequence number is one above the last.
//! - A set or touch whose deadline has passed is applied like any other (it
//!   is never skipped, or an older value would come back); what is expired
//!   once the whole log is applied is dropped.
//! - An incomplete record at the end of the newest segment (cut short, or
//!   zeros where its bytes never reached the disk), with no valid record
//!   after it, is a torn write: it is cut off and the log opens.
//! - Any other bad record is corruption, a complete record whose checksum
//!   fails included: opening fails naming the file, the offset and the last
//!   good sequence number. Nothing is skipped over.

use std::fs::File;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hashbrown::DefaultHashBuilder;
use memmap2::{Advice, Mmap, MmapOptions, UncheckedAdvice};

use crate::error::{CorruptReason, Error, Result};
use crate::record::{self, RECORD_HEADER_LEN, Record, SEGMENT_HEADER_LEN, SegmentId};
use crate::segment::{Listing, ManifestState, list_dir, list_segments, read_manifest, segment_path};
use crate::state::State;

/// Bytes between two progress reports (at most; a million records also
/// makes one).
const PROGRESS_BYTES: u64 = 64 << 20;

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
    /// The first record's sequence number, if the log holds any record.
    pub first_seq: Option<u64>,
    pub torn: Option<TornTail>,
    pub elapsed_ms: u64,
    /// Files named like segments but not in the canonical form: never read.
    pub strays: Vec<PathBuf>,
    /// The newest segment and the length of its valid prefix.
    pub(crate) newest: Option<(SegmentId, u64)>,
    pub(crate) plan: Plan,
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
    /// Before any record: how many set records the log holds, and the
    /// bytes of their keys and values.
    Presize {
        sets: usize,
        bytes: u64,
    },
    /// A record, with its key's hash if the scan was given a hasher and it
    /// is a set.
    Record(SegmentId, Record<'a>, Option<u64>),
    Progress(Progress),
    /// Every record in the first `end` bytes of the `map`th segment read
    /// has been handed over (sent every few MiB and at each segment's end).
    Applied {
        map: usize,
        end: usize,
    },
    /// A set record for a key with this hash comes a few records later: its
    /// place in the index can be fetched into the cache ahead of it. Only
    /// from a scan given a hasher.
    Ahead(u64),
}

type Map = (SegmentId, PathBuf, Data);

/// A segment's bytes: mapped from its file, or (for fuzzing) in memory.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) enum Data {
    Empty,
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Empty => &[],
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

/// Which segments make up the log, as the MANIFEST and the directory agree.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Segments to read, in order, numbered without a gap.
    pub(crate) ids: Vec<SegmentId>,
    /// Below the floor: dead, safe to remove.
    pub(crate) dead: Vec<SegmentId>,
    pub(crate) floor: SegmentId,
    /// The sequence number the first record must carry, where known.
    pub(crate) first_seq: Option<u64>,
    /// The newest segment the MANIFEST records (the log must reach it).
    pub(crate) newest: Option<SegmentId>,
    /// The MANIFEST is missing or in the old text form: write one on open.
    pub(crate) store_manifest: bool,
    pub(crate) strays: Vec<PathBuf>,
}

/// Checks the segments present against the MANIFEST. Every disagreement
/// is an error that names `cachetd repair`; nothing is changed here.
pub(crate) fn plan(dir: &Path) -> Result<Plan> {
    plan_from(dir, list_dir(dir)?, read_manifest(dir)?)
}

/// `plan` over a listing and a MANIFEST already read (`dir` names them in
/// errors).
fn plan_from(dir: &Path, listing: Listing, manifest: ManifestState) -> Result<Plan> {
    let mismatch = |problem: String| Error::Manifest { dir: dir.to_path_buf(), problem };
    let present = &listing.segments;
    let (floor, first_seq, newest, store_manifest) = match manifest {
        ManifestState::Malformed(why) => return Err(mismatch(format!("the MANIFEST is unreadable: {why}"))),
        ManifestState::Valid(m) => (m.floor, Some(m.first_seq), Some(m.newest), false),
        ManifestState::Legacy { floor } => (floor, None, None, true),
        // A log that never had a MANIFEST (a new directory, or one a crash
        // left before its first MANIFEST was stored) must start at sequence 1.
        ManifestState::Missing => (present.first().copied().unwrap_or(SegmentId(1)), Some(1), None, true),
    };
    let (dead, ids): (Vec<SegmentId>, Vec<SegmentId>) = present.iter().partition(|id| **id < floor);
    let describe = |ids: &[SegmentId]| match (ids.first(), ids.last()) {
        (Some(a), Some(b)) => format!("segments {}..={} are present", a.0, b.0),
        _ => "no segment is present".to_string(),
    };
    if !present.is_empty() || newest.is_some() {
        if ids.first() != Some(&floor) {
            return Err(mismatch(format!(
                "the MANIFEST says the log starts at segment {}, which is missing ({})",
                floor.0,
                describe(present)
            )));
        }
        if let Some(gap) = ids.windows(2).find(|w| w[1].0 != w[0].0 + 1) {
            return Err(mismatch(format!(
                "segment {} is missing between segments {} and {} ({})",
                gap[0].0 + 1,
                gap[0].0,
                gap[1].0,
                describe(present)
            )));
        }
        let last = *ids.last().expect("the floor segment is present");
        if let Some(newest) = newest {
            if last < newest {
                return Err(mismatch(format!(
                    "segment {}, the newest the MANIFEST records, is missing ({})",
                    newest.0,
                    describe(present)
                )));
            }
            // A crash between creating a segment and recording it leaves one
            // more; anything beyond that is not this log's.
            if last.0 > newest.0 + 1 {
                return Err(mismatch(format!(
                    "segment {} is newer than the newest the MANIFEST records ({}), so it is not part of this log",
                    last.0, newest.0
                )));
            }
        }
    }
    Ok(Plan { ids, dead, floor, first_seq, newest, store_manifest, strays: listing.strays })
}

/// Walks the log in order, handing each record to `visit`. Stops at the
/// first bad record: returns `Err(BadSpot)` for corruption, and reports a
/// torn tail of the newest segment in the report.
///
/// Checking (page faults, CRCs, decoding) runs on a second thread a few
/// thousand records ahead of `visit`, which applies them: on a 2-core machine
/// that takes about a third off the time to open. A segment's pages are
/// dropped from memory once it is applied, so replaying a large log does not
/// hold it all in memory.
///
/// Given a `hasher`, the checking thread also hashes each set's key; the
/// applying thread uses that one hash for its look-ahead and its insert
/// (it used to hash every key twice).
pub(crate) fn scan(
    dir: &Path,
    plan: Plan,
    hasher: Option<&DefaultHashBuilder>,
    visit: impl FnMut(Event<'_>),
) -> Result<std::result::Result<ReplayReport, BadSpot>> {
    let started = Instant::now();
    let maps = map_segments(dir, &plan)?;
    let mut result = scan_maps(&maps, &plan, hasher, visit);
    if let Ok(report) = &mut result {
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        report.strays = plan.strays.clone();
        report.plan = plan;
    }
    Ok(result)
}

fn map_segments(dir: &Path, plan: &Plan) -> Result<Vec<Map>> {
    let mut maps: Vec<Map> = Vec::with_capacity(plan.ids.len());
    for &id in &plan.ids {
        let path = segment_path(dir, id);
        let file = File::open(&path).map_err(Error::io("opening segment", &path))?;
        let len = file.metadata().map_err(Error::io("reading metadata of", &path))?.len();
        let map = if len == 0 {
            Data::Empty
        } else {
            // SAFETY: the data directory is locked by this process (or opened
            // by an offline tool while no daemon runs), so nothing changes the
            // file while it is mapped; every read is bounds-checked.
            let map = unsafe { MmapOptions::new().map(&file) }.map_err(Error::io("mapping segment", &path))?;
            let _ = map.advise(Advice::Sequential);
            Data::Mapped(map)
        };
        maps.push((id, path, map));
    }
    Ok(maps)
}

/// `scan` over segments already mapped.
fn scan_maps(
    maps: &[Map],
    plan: &Plan,
    hasher: Option<&DefaultHashBuilder>,
    mut visit: impl FnMut(Event<'_>),
) -> std::result::Result<ReplayReport, BadSpot> {
    const CHUNK: usize = 4096;
    // How many records ahead a set's key is announced: enough for the
    // index's cache misses to overlap the records between.
    const AHEAD: usize = 8;
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Event<'_>>>(4);
    let first_seq = plan.first_seq;
    std::thread::scope(|s| {
        let checker = std::thread::Builder::new()
            .name("cachet-replay".into())
            .spawn_scoped(s, move || {
                let mut chunk = Vec::with_capacity(CHUNK);
                let result = verify(maps, first_seq, |mut ev| {
                    let flush = chunk.len() + 1 == CHUNK || matches!(ev, Event::Applied { .. });
                    if let (Some(h), Event::Record(_, Record::Set { key, .. }, hash)) = (hasher, &mut ev) {
                        *hash = Some(h.hash_one(key));
                    }
                    chunk.push(ev);
                    if flush {
                        let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                    }
                });
                let _ = tx.send(chunk);
                result
            })
            .expect("spawning the replay checker thread");
        // How much of each map has been given back to the kernel.
        let mut dropped = vec![0usize; maps.len()];
        let mut hashes: Vec<Option<u64>> = Vec::with_capacity(CHUNK);
        for chunk in rx {
            hashes.clear();
            hashes.extend(chunk.iter().map(|ev| match ev {
                Event::Record(_, _, hash) => *hash,
                _ => None,
            }));
            for (i, ev) in chunk.into_iter().enumerate() {
                if let Some(&Some(hash)) = hashes.get(i + AHEAD) {
                    visit(Event::Ahead(hash));
                }
                if let Event::Applied { map: n, end } = ev {
                    let end = if end == maps[n].2.bytes().len() { end } else { end / PAGE * PAGE };
                    if let Data::Mapped(map) = &maps[n].2
                        && end > dropped[n]
                    {
                        // SAFETY: every record borrowed from this range has
                        // been applied (copied into the index) and dropped;
                        // the checker is past it. DONTNEED on a read-only
                        // file mapping only drops pages; a later read
                        // refaults them from the file.
                        let _ = unsafe {
                            map.unchecked_advise_range(UncheckedAdvice::DontNeed, dropped[n], end - dropped[n])
                        };
                        dropped[n] = end;
                    }
                    continue;
                }
                visit(ev);
            }
        }
        checker.join().expect("replay checker thread panicked")
    })
}

/// Replays segment files held in memory, named as in a data directory
/// (`seg-…log`, `MANIFEST`), with the same rules as `replay_into`: no files
/// and no threads, so a fuzzer runs it tens of thousands of times a second.
#[cfg(feature = "testing")]
pub(crate) fn replay_in_memory(files: &[(&str, &[u8])], state: &mut State, now: u64) -> Result<ReplayReport> {
    let dir = Path::new("(in memory)");
    let mut listing = Listing::default();
    let mut manifest = ManifestState::Missing;
    for (name, bytes) in files {
        match crate::segment::parse_segment_name(name) {
            Some(id) => listing.segments.push(id),
            None if *name == crate::segment::MANIFEST => manifest = crate::segment::Manifest::decode(bytes),
            None => listing.strays.push(dir.join(name)),
        }
    }
    listing.segments.sort();
    listing.segments.dedup();
    let plan = plan_from(dir, listing, manifest)?;
    let maps: Vec<Map> = plan
        .ids
        .iter()
        .map(|id| {
            let name = crate::segment::segment_path(Path::new(""), *id);
            let bytes = files.iter().find(|(n, _)| Path::new(n) == name).map_or(&[][..], |(_, b)| *b);
            (*id, dir.join(&name), Data::Owned(bytes.to_vec()))
        })
        .collect();
    let verified = verify(&maps, plan.first_seq, |event| match event {
        Event::Presize { sets, .. } => state.reserve(sets),
        Event::Record(seg, rec, hash) => state.replay(&rec, seg, now, hash),
        Event::Progress(_) | Event::Applied { .. } | Event::Ahead(_) => {}
    });
    match verified {
        Ok(report) => {
            state.finish_replay(now);
            Ok(report)
        }
        Err(bad) => Err(corrupt(dir, bad)),
    }
}

/// Checks every record of `maps` in order and emits what is good.
fn verify<'a>(
    maps: &'a [Map],
    first_seq: Option<u64>,
    mut emit: impl FnMut(Event<'a>),
) -> std::result::Result<ReplayReport, BadSpot> {
    let mut report = ReplayReport::default();
    let bytes_total: u64 = maps.iter().map(|(_, _, m)| m.bytes().len() as u64).sum();
    let (sets, bytes) = count_set_records(maps);
    emit(Event::Presize { sets, bytes });
    // The record before the first one, where the MANIFEST says which it is.
    let mut last_seq: Option<u64> = first_seq.map(|s| s - 1);
    let mut bytes_done = 0u64;
    let mut records = 0u64;
    let newest = maps.last().map(|(id, _, _)| *id);
    let mut reported = 0u64;
    for (n, (id, path, map)) in maps.iter().enumerate() {
        let bytes: &[u8] = map.bytes();
        let is_newest = Some(*id) == newest;
        let last_good = last_seq.unwrap_or(0);
        let version = record::check_segment_header(bytes, *id);
        if let Err(e) = version {
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
        let mut applied = 0;
        while pos < bytes.len() {
            match record::decode(&bytes[pos..], *id) {
                Ok((seq, rec, used)) => {
                    if let Some(prev) = last_seq
                        && seq.0 != prev + 1
                    {
                        let reason = if records == 0 {
                            CorruptReason::Start { found: seq.0, expected: prev + 1 }
                        } else {
                            CorruptReason::Sequence { found: seq.0, expected: prev + 1 }
                        };
                        return Err(BadSpot { segment: *id, offset: pos as u64, reason, last_good_seq: prev });
                    }
                    emit(Event::Record(*id, rec, None));
                    report.first_seq.get_or_insert(seq.0);
                    last_seq = Some(seq.0);
                    records += 1;
                    pos += used;
                    if pos - applied >= APPLIED_EVERY {
                        emit(Event::Applied { map: n, end: pos });
                        applied = pos;
                    }
                    // Every million records or 64 MiB, whichever comes first
                    // (large values make records few and long).
                    let done = bytes_done + pos as u64;
                    if records.is_multiple_of(1_000_000) || done >= reported + PROGRESS_BYTES {
                        emit(Event::Progress(Progress { bytes_done: done, bytes_total, records }));
                        reported = done;
                    }
                }
                Err(err) => {
                    let last_good = last_seq.unwrap_or(0);
                    let torn = is_newest
                        && match damage(bytes, pos) {
                            Damage::PastEnd => !valid_record_after(bytes, pos, *id, last_good),
                            Damage::LostSectors => true,
                            Damage::Damaged => false,
                        };
                    if torn {
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
        // Appends go to the newest segment only if it was written in this
        // build's format: a log of an older version gets a new segment, so
        // every segment holds the records its header's version allows.
        report.newest = (version == Ok(record::FORMAT_VERSION)).then_some((*id, pos.min(bytes.len()) as u64));
        bytes_done += bytes.len() as u64;
        emit(Event::Applied { map: n, end: bytes.len() });
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

/// How a bad record at the end of the newest segment came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// Its header or body runs past the end of the file: the write was cut
    /// short. Torn, unless a valid record follows (then its length is what
    /// was damaged).
    PastEnd,
    /// Sectors of it read back as zeros: the file grew but those sectors
    /// never reached the disk (a power loss, with writes reordered). Records
    /// after it cannot have been synced either (an fdatasync would have
    /// written the lost sectors too), so it is torn whatever follows.
    LostSectors,
    /// Complete, with no lost sector, and its checksum fails: written whole
    /// and damaged later. Corruption, even at the very end of the log: under
    /// `sync=always` it was acknowledged.
    Damaged,
}

/// The unit in which a power loss can drop written data.
const SECTOR: usize = 512;

/// A memory page: what DONTNEED drops.
const PAGE: usize = 4096;

/// How often (in bytes of a segment) replay tells the applying thread how
/// far it may drop the mapping's pages: this bounds the mapped log held in
/// memory during replay to a few times this much.
const APPLIED_EVERY: usize = 4 << 20;

/// Classifies the bad record at `pos`.
fn damage(bytes: &[u8], pos: usize) -> Damage {
    let tail = &bytes[pos..];
    // Zeros from the record's start to a sector boundary with more bytes
    // after it: the sector that held the old end of the file never reached
    // the disk, while a later one did. Its header is then garbage (its
    // length is often zero), so this is told before the length is read.
    let first_sector = pos.next_multiple_of(SECTOR);
    if !pos.is_multiple_of(SECTOR) && first_sector < bytes.len() && bytes[pos..first_sector].iter().all(|b| *b == 0) {
        return Damage::LostSectors;
    }
    if tail.len() < RECORD_HEADER_LEN {
        return Damage::PastEnd;
    }
    let len = record::length_field(tail);
    if len > tail.len() - RECORD_HEADER_LEN {
        return Damage::PastEnd;
    }
    // `len` fits (checked above), so the record ends inside the file.
    let end = pos + RECORD_HEADER_LEN + len;
    let lost_inside = (first_sector..end.saturating_sub(SECTOR - 1))
        .step_by(SECTOR)
        .any(|at| bytes[at..at + SECTOR].iter().all(|b| *b == 0));
    // Zeros that end the record and go on to a sector boundary (or the end
    // of the file): the sector that held the old end of the file, written
    // before the rest of the record reached the disk. The run starts at a
    // sector boundary, or at the record (all of it is zeros), or is long
    // enough that a value ending in a few zero bytes is not mistaken for it.
    let trailing = bytes[pos..end].iter().rev().take_while(|b| **b == 0).count();
    let lost_end = trailing > 0 && {
        let after = bytes[end..].iter().take_while(|b| **b == 0).count();
        let reach = end + after.min(end.next_multiple_of(SECTOR) - end);
        let start = end - trailing;
        // A run that starts inside the record's data holds a sector boundary
        // before the record's end when the sector after it was lost and the
        // bytes just before it happen to be zeros (a sequence number's high
        // bytes, say).
        let holds_boundary = start.next_multiple_of(SECTOR) < end;
        (reach == bytes.len() || reach.is_multiple_of(SECTOR))
            && (start == pos || start.is_multiple_of(SECTOR) || holds_boundary || reach - start >= 16)
    };
    if lost_inside || lost_end { Damage::LostSectors } else { Damage::Damaged }
}

/// Whether any offset after `pos` holds a record that validates and comes
/// after `last_good`: if so, the bad record at `pos` is not a torn tail.
///
/// Linear in the bytes scanned: a CRC is computed only where the cheap
/// checks pass (length in bounds, layout adds up, and a sequence number that
/// a record at that distance could carry), so a torn value whose bytes look
/// like record lengths costs a few comparisons per offset, not a CRC each.
fn valid_record_after(bytes: &[u8], pos: usize, id: SegmentId, last_good: u64) -> bool {
    (pos + 1..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1)).any(|p| {
        let most_between = ((p - pos) / record::MIN_RECORD_LEN) as u64;
        match record::plausible_seq(&bytes[p..]) {
            Some(seq) if seq > last_good && seq <= last_good.saturating_add(most_between + 1) => {
                #[cfg(test)]
                tests::CRC_TRIES.with(|c| c.set(c.get() + 1));
                matches!(record::decode(&bytes[p..], id), Ok((seq, _, _)) if seq.0 > last_good)
            }
            _ => false,
        }
    })
}

/// A quick pass that hops from length to length counting set records and
/// the bytes of their keys and values, to size the index once instead of
/// growing it during replay and to fault in the arena's pages ahead of it.
fn count_set_records(maps: &[Map]) -> (usize, u64) {
    let (mut sets, mut set_bytes) = (0usize, 0u64);
    for (_, _, map) in maps {
        // This pass touches every page of the log: mapping them in one call
        // took 14 ms for 1M records, faulting them in one by one 20 ms.
        if let Data::Mapped(m) = map {
            let _ = m.advise(Advice::PopulateRead);
        }
        let bytes: &[u8] = map.bytes();
        let mut pos = SEGMENT_HEADER_LEN;
        while pos + RECORD_HEADER_LEN < bytes.len() {
            let len = record::length_field(&bytes[pos..]);
            if len == 0 || pos + RECORD_HEADER_LEN + len > bytes.len() {
                break;
            }
            if record::is_set(bytes[pos + record::RECORD_TYPE]) {
                sets += 1;
                set_bytes += len.saturating_sub(1 + record::SET_FIXED) as u64;
            }
            pos += RECORD_HEADER_LEN + len;
        }
    }
    (sets, set_bytes)
}

/// Replays `dir` into `state` at time `now`.
pub(crate) fn replay_into(
    dir: &Path,
    state: &mut State,
    now: u64,
    progress: impl FnMut(Progress),
) -> Result<ReplayReport> {
    replay_observed(dir, state, now, progress, |_| {})
}

/// `replay_into`, showing the state to `observe` after every record.
pub(crate) fn replay_observed(
    dir: &Path,
    state: &mut State,
    now: u64,
    mut progress: impl FnMut(Progress),
    mut observe: impl FnMut(&State),
) -> Result<ReplayReport> {
    let plan = plan(dir)?;
    let hasher = state.hasher().clone();
    let scanned = scan(dir, plan, Some(&hasher), |event| match event {
        Event::Presize { sets, bytes } => {
            state.reserve(sets);
            state.feed_pages_for(sets, bytes);
        }
        Event::Record(seg, rec, hash) => {
            state.replay(&rec, seg, now, hash);
            observe(state);
        }
        Event::Progress(p) => progress(p),
        Event::Ahead(hash) => state.prefetch(hash),
        Event::Applied { .. } => {}
    });
    state.end_page_feed();
    match scanned? {
        Ok(report) => {
            state.finish_replay(now);
            Ok(report)
        }
        Err(bad) => Err(corrupt(dir, bad)),
    }
}

pub(crate) fn corrupt(dir: &Path, bad: BadSpot) -> Error {
    if let CorruptReason::Start { .. } = bad.reason {
        return Error::Manifest { dir: dir.to_path_buf(), problem: bad.reason.to_string() };
    }
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

/// Verifies a data directory offline without changing it: the MANIFEST
/// against the segments present, and every record's CRC, sequence and
/// layout. A torn tail is reported but is not an error (it is what a crash
/// leaves and opening cuts it off).
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
    /// `None` when no record was bad.
    pub cut: Option<Cut>,
    /// What was wrong with the MANIFEST, when it was rebuilt from the segments.
    pub manifest_rebuilt: Option<String>,
    /// Segment files that are not part of the log as rebuilt, moved aside.
    pub moved_aside: Vec<PathBuf>,
    /// Files named like segments but not in the canonical form: left alone.
    pub strays: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Cut {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_dropped: u64,
    pub last_good_seq: u64,
    /// Copies of the damaged file and of every later segment, moved aside.
    pub backups: Vec<PathBuf>,
    /// Set when the damaged file could not be copied (a full disk, say) and
    /// was cut in place without a backup: why the copy failed.
    pub in_place: Option<String>,
}

impl RepairReport {
    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        self.cut.is_some() || self.manifest_rebuilt.is_some() || !self.moved_aside.is_empty()
    }
}

/// Brings a damaged data directory back to a log that opens, keeping every
/// record it can vouch for and moving (never deleting) what it drops:
///
/// - A MANIFEST that is unreadable or disagrees with the segments is
///   rebuilt from them: of the runs of consecutively numbered segments, the
///   one holding the newest records is the log, from its lowest segment
///   that reads cleanly; the other segment files are moved aside.
/// - A bad record: the damaged segment is copied aside and truncated at the
///   bad spot (in place, without a copy, when the disk has no room for
///   one), and every later segment is moved aside (they follow a gap, so
///   applying them could resurrect stale values).
///
/// Run only while no daemon uses the directory (the lock is taken).
pub fn repair(dir: &Path) -> Result<RepairReport> {
    let _lock = crate::segment::lock_dir(dir)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = |p: &Path, why: &str| PathBuf::from(format!("{}.{why}-{stamp}", p.display()));
    let mut report = RepairReport::default();
    let checked = plan(dir).and_then(|plan| match scan(dir, plan.clone(), None, |_| {})? {
        Err(bad) if matches!(bad.reason, CorruptReason::Start { .. }) => Err(corrupt(dir, bad)),
        _ => Ok(plan),
    });
    let mut plan = match checked {
        Ok(plan) => plan,
        Err(Error::Manifest { problem, .. }) => {
            let plan = rebuild_plan(dir)?;
            let manifest = dir.join(crate::segment::MANIFEST);
            if manifest.exists() {
                std::fs::rename(&manifest, aside(&manifest, "corrupt"))
                    .map_err(Error::io("moving aside", &manifest))?;
            }
            for id in list_segments(dir)?.into_iter().filter(|id| !plan.ids.contains(id)) {
                let path = segment_path(dir, id);
                let to = aside(&path, "unused");
                std::fs::rename(&path, &to).map_err(Error::io("moving aside", &path))?;
                report.moved_aside.push(to);
            }
            report.manifest_rebuilt = Some(problem);
            plan
        }
        Err(e) => return Err(e),
    };
    report.strays = plan.strays.clone();
    let scanned = scan(dir, plan.clone(), None, |_| {})?;
    let first_seq = match scanned {
        Ok(r) => r.first_seq,
        Err(bad) => {
            let cut = cut_at(dir, &bad, &aside)?;
            if bad.offset == 0 {
                plan.ids.retain(|id| *id < bad.segment);
            } else {
                plan.ids.retain(|id| *id <= bad.segment);
            }
            report.cut = Some(cut);
            // The records before the cut are sound: where the log starts is
            // what a scan of them finds.
            match scan(dir, plan.clone(), None, |_| {})? {
                Ok(r) => r.first_seq,
                Err(bad) => return Err(corrupt(dir, bad)),
            }
        }
    };
    if report.changed() || plan.store_manifest {
        store_manifest_for(dir, &plan, first_seq)?;
    }
    crate::segment::sync_dir(dir)?;
    Ok(report)
}

/// Writes the MANIFEST that describes `plan` after a repair. A log left
/// with no segment at all gets an empty floor segment, so the MANIFEST
/// never names a segment that is not there.
fn store_manifest_for(dir: &Path, plan: &Plan, first_seq: Option<u64>) -> Result<()> {
    let floor = plan.ids.first().copied().unwrap_or(plan.floor.max(SegmentId(1)));
    let newest = plan.ids.last().copied().unwrap_or(floor);
    if plan.ids.is_empty() {
        drop(crate::segment::ActiveSegment::create(dir, floor, &None)?);
    }
    let first_seq = first_seq.or(plan.first_seq).unwrap_or(1);
    crate::segment::Manifest { floor, first_seq, newest }.store(dir)
}

/// The log as the segments alone describe it (the MANIFEST being lost or
/// wrong): the run of consecutively numbered segments whose records are the
/// newest, read from its lowest segment that scans without corruption.
fn rebuild_plan(dir: &Path) -> Result<Plan> {
    let listing = list_dir(dir)?;
    let mut runs: Vec<Vec<SegmentId>> = Vec::new();
    for id in listing.segments {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|l| l.0 + 1 == id.0) => run.push(id),
            _ => runs.push(vec![id]),
        }
    }
    let mut best: Option<(u64, Plan)> = None;
    for run in runs {
        for start in 0..run.len() {
            let ids = run[start..].to_vec();
            let candidate =
                Plan { floor: ids[0], ids, strays: listing.strays.clone(), store_manifest: true, ..Plan::default() };
            let newest_seq = match scan(dir, candidate.clone(), None, |_| {})? {
                Ok(r) => r.last_seq,
                // Damage in the last segment is cut there; damage before it
                // means the log starts after the damaged segment.
                Err(bad) if Some(&bad.segment) == candidate.ids.last() => bad.last_good_seq,
                Err(_) => continue,
            };
            if best.as_ref().is_none_or(|(seq, _)| newest_seq >= *seq) {
                best = Some((newest_seq, candidate));
            }
            break;
        }
    }
    Ok(best.map(|(_, plan)| plan).unwrap_or(Plan { strays: listing.strays, store_manifest: true, ..Plan::default() }))
}

/// Cuts the log at a bad record: the damaged segment is copied aside and
/// truncated (or, with a bad header, moved aside whole), and every later
/// segment is moved aside.
fn cut_at(dir: &Path, bad: &BadSpot, aside: &dyn Fn(&Path, &str) -> PathBuf) -> Result<Cut> {
    let damaged = segment_path(dir, bad.segment);
    let mut backups = Vec::new();
    let mut in_place = None;
    let len = std::fs::metadata(&damaged).map_err(Error::io("reading metadata of", &damaged))?.len();
    if bad.offset == 0 {
        // The header itself is bad: the whole segment goes aside.
        let to = aside(&damaged, "corrupt");
        std::fs::rename(&damaged, &to).map_err(Error::io("moving aside", &damaged))?;
        backups.push(to);
    } else {
        let copy = aside(&damaged, "corrupt");
        match std::fs::copy(&damaged, &copy) {
            Ok(_) => backups.push(copy),
            Err(e) => {
                // No room for a copy (the usual reason after a full disk):
                // cut in place rather than leave the daemon unable to start.
                let _ = std::fs::remove_file(&copy);
                in_place = Some(format!("could not back up {}: {e}; cut in place", damaged.display()));
            }
        }
        let f = std::fs::OpenOptions::new().write(true).open(&damaged).map_err(Error::io("opening", &damaged))?;
        f.set_len(bad.offset).map_err(Error::io("truncating", &damaged))?;
        f.sync_all().map_err(Error::io("syncing", &damaged))?;
    }
    for id in list_segments(dir)?.into_iter().filter(|id| *id > bad.segment) {
        let path = segment_path(dir, id);
        let to = aside(&path, "corrupt");
        std::fs::rename(&path, &to).map_err(Error::io("moving aside", &path))?;
        backups.push(to);
    }
    crate::segment::sync_dir(dir)?;
    Ok(Cut {
        file: damaged,
        offset: bad.offset,
        bytes_dropped: len - bad.offset,
        last_good_seq: bad.last_good_seq,
        backups,
        in_place,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;
    use crate::record::{Seq, encode, segment_header};

    thread_local! {
        pub(super) static CRC_TRIES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Case 14 of issue 10: a torn value whose bytes look like record
    /// lengths made the search for a later valid record compute a CRC at
    /// every offset (quadratic: 66 s for an 8 MiB tail). The cheap checks
    /// now reject those offsets before any CRC.
    #[test]
    fn the_search_after_a_torn_record_is_linear() {
        let id = SegmentId(1);
        let mut seg = segment_header(id).to_vec();
        encode(
            &mut seg,
            id,
            Seq(1),
            &Record::Set { key: b"a", value: b"b", expires: crate::UnixMillis(0), encoding: Encoding::MessagePack },
        );
        let torn_at = seg.len();
        let fake: Vec<u8> = (0..(1 << 18)).flat_map(|_| 40u32.to_le_bytes()).collect();
        encode(
            &mut seg,
            id,
            Seq(2),
            &Record::Set { key: b"t", value: &fake, expires: crate::UnixMillis(0), encoding: Encoding::MessagePack },
        );
        seg.truncate(seg.len() - 100);
        CRC_TRIES.with(|c| c.set(0));
        assert!(!valid_record_after(&seg, torn_at, id, 1));
        let tries = CRC_TRIES.with(|c| c.get());
        assert!(tries < 16, "{tries} CRCs for one torn record");
        // A real record after the bad one is still found.
        let mut with_next = seg[..torn_at].to_vec();
        with_next.extend_from_slice(&[0xAB; 40]);
        encode(&mut with_next, id, Seq(3), &Record::Delete { key: b"x" });
        assert!(valid_record_after(&with_next, torn_at, id, 1));
    }

    #[test]
    fn only_incomplete_records_count_as_torn() {
        let id = SegmentId(1);
        let mut seg = segment_header(id).to_vec();
        let at = seg.len();
        encode(
            &mut seg,
            id,
            Seq(1),
            &Record::Set {
                key: b"k",
                value: &[7; 5000],
                expires: crate::UnixMillis(0),
                encoding: Encoding::MessagePack,
            },
        );
        assert_eq!(damage(&seg[..seg.len() - 1], at), Damage::PastEnd, "cut short");
        let mut zeroed = seg.clone();
        zeroed[4096..].fill(0);
        assert_eq!(damage(&zeroed, at), Damage::LostSectors, "its last sectors never reached the disk");
        let mut hole = seg.clone();
        hole[1024..1536].fill(0);
        assert_eq!(damage(&hole, at), Damage::LostSectors, "a sector in its middle never reached the disk");
        let mut flipped = seg.clone();
        flipped[at + 100] ^= 1;
        assert_eq!(damage(&flipped, at), Damage::Damaged, "complete but damaged");
        // Found by the replay fuzzer: a zero length at the very end.
        let mut zero_len = segment_header(id).to_vec();
        zero_len.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        assert_eq!(damage(&zero_len, SEGMENT_HEADER_LEN), Damage::LostSectors, "zeroed space");
        zero_len[SEGMENT_HEADER_LEN + 5] = 1;
        assert_eq!(damage(&zero_len, SEGMENT_HEADER_LEN), Damage::Damaged);
        // Found by the power-loss test: a record starting 2 bytes before a
        // sector boundary, the sector with the old end of the file lost (its
        // first 2 bytes read as zeros), the next sector on the disk.
        let mut straddle = segment_header(id).to_vec();
        straddle.resize(510, 1);
        let at = straddle.len();
        encode(&mut straddle, id, Seq(9), &Record::Delete { key: b"some key" });
        straddle[at..512].fill(0);
        assert_eq!(damage(&straddle, at), Damage::LostSectors, "the old end's sector lost, a later one kept");
        // Also found by it: the sector after a boundary inside a record lost,
        // with the zero bytes just before the boundary (part of the header)
        // making the run start off the boundary and shorter than 16 bytes.
        let mut late = segment_header(id).to_vec();
        late.resize(500, 1);
        let at = late.len();
        encode(&mut late, id, Seq(9), &Record::Delete { key: b"k" });
        let end = late.len();
        assert!(end > 512 && end - 510 < 16, "the record crosses 512 near its end: {at}..{end}");
        late[510..512].fill(0);
        late[512..].fill(0);
        assert_eq!(damage(&late, at), Damage::LostSectors, "the sector after 512 lost");
    }
}
