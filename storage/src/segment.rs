//! Segment files on disk: their canonical names, creation (header, file and
//! directory synced), appending, and the checksummed MANIFEST that says what
//! the log must contain (its first segment and sequence number, its newest
//! segment), which replay checks against the segments present. Also the
//! injectable I/O faults and durable-length tracking the fault and
//! power-loss tests use.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::record::{SEGMENT_HEADER_LEN, SegmentId, segment_header};

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".log";
pub(crate) const MANIFEST: &str = "MANIFEST";

pub(crate) fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(segment_name(id))
}

fn segment_name(id: SegmentId) -> String {
    format!("{PREFIX}{:016}{SUFFIX}", id.0)
}

/// The segment a file name denotes, if the name is in the canonical form
/// `seg-` + the number zero-padded to 16 digits + `.log` and the number fits
/// the in-memory segment field. `seg-3.log`, `seg-0000000000000003.log.bak`
/// or a number of 17 zero-padded digits are not segments.
pub(crate) fn parse_segment_name(name: &str) -> Option<SegmentId> {
    let num = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = SegmentId::from_disk(num.parse::<u64>().ok()?)?;
    (segment_name(id) == name).then_some(id)
}

/// What the data directory holds: segment ids (ascending) and the names of
/// files that look like segments but are not in the canonical form (stray
/// copies; they are reported and never read or removed).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) segments: Vec<SegmentId>,
    pub(crate) strays: Vec<PathBuf>,
}

pub(crate) fn list_dir(dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(Error::io("reading directory", dir))? {
        let entry = entry.map_err(Error::io("reading directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(id) => listing.segments.push(id),
            None if name.starts_with(PREFIX) && name.ends_with(SUFFIX) => listing.strays.push(entry.path()),
            None => {}
        }
    }
    listing.segments.sort();
    listing.strays.sort();
    Ok(listing)
}

/// Segment ids present in `dir`, ascending (canonical names only).
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentId>> {
    Ok(list_dir(dir)?.segments)
}

/// Locks the data directory itself (`flock` on the directory), so two
/// processes never write one log. A lock on a file inside it could be
/// defeated by unlinking the file while the daemon runs (a second daemon
/// would create a new one and lock that); the directory cannot be unlinked
/// while it holds segments, and a new directory at the same path holds
/// none of these files. The lock goes with the process, however it ends.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let file = File::open(dir).map_err(Error::io("opening data directory", dir))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { dir: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", dir)(e)),
    }
}

/// The durable description of what the log must contain (FORMAT.md,
/// "MANIFEST"): the first live segment, the sequence number its first record
/// carries, and the newest segment created. Replay checks the segments
/// present against it, so a missing oldest or newest segment is noticed, and
/// nothing is ever unlinked on its say-so unless the segments agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) floor: SegmentId,
    pub(crate) first_seq: u64,
    pub(crate) newest: SegmentId,
}

pub(crate) const MANIFEST_MAGIC: [u8; 8] = *b"CACHETMF";
pub(crate) const MANIFEST_VERSION: u32 = 1;
/// magic (8) | version (4) | reserved (4) | floor (8) | first_seq (8) |
/// newest (8) | reserved (4) | crc32 of the 44 bytes before it (4).
pub(crate) const MANIFEST_LEN: usize = 48;
const MANIFEST_FLOOR: usize = 16;
const MANIFEST_FIRST_SEQ: usize = MANIFEST_FLOOR + 8;
const MANIFEST_NEWEST: usize = MANIFEST_FIRST_SEQ + 8;
const MANIFEST_CRC: usize = MANIFEST_LEN - 4;

/// What reading the MANIFEST found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ManifestState {
    /// No MANIFEST file.
    Missing,
    /// The text form written before the MANIFEST had a checksum
    /// (`floor N`): believed only where the segments agree with it.
    Legacy {
        floor: SegmentId,
    },
    Valid(Manifest),
    /// Present but unreadable as either form: why.
    Malformed(String),
}

impl Manifest {
    pub(crate) fn encode(&self) -> [u8; MANIFEST_LEN] {
        let mut b = [0u8; MANIFEST_LEN];
        b[0..8].copy_from_slice(&MANIFEST_MAGIC);
        b[8..12].copy_from_slice(&MANIFEST_VERSION.to_le_bytes());
        b[MANIFEST_FLOOR..MANIFEST_FLOOR + 8].copy_from_slice(&self.floor.to_disk().to_le_bytes());
        b[MANIFEST_FIRST_SEQ..MANIFEST_FIRST_SEQ + 8].copy_from_slice(&self.first_seq.to_le_bytes());
        b[MANIFEST_NEWEST..MANIFEST_NEWEST + 8].copy_from_slice(&self.newest.to_disk().to_le_bytes());
        let crc = crc32fast::hash(&b[..MANIFEST_CRC]);
        b[MANIFEST_CRC..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(bytes: &[u8]) -> ManifestState {
        if bytes.is_empty() {
            return ManifestState::Malformed("the file is empty".into());
        }
        if !bytes.starts_with(&MANIFEST_MAGIC) {
            if let Some(floor) = std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| t.trim().strip_prefix("floor "))
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(SegmentId::from_disk)
            {
                return ManifestState::Legacy { floor };
            }
            return ManifestState::Malformed("not a cachet MANIFEST (bad magic)".into());
        }
        if bytes.len() != MANIFEST_LEN {
            return ManifestState::Malformed(format!("{} bytes where {MANIFEST_LEN} were expected", bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != MANIFEST_VERSION {
            return ManifestState::Malformed(format!(
                "MANIFEST format version {version}, this build reads version {MANIFEST_VERSION}"
            ));
        }
        let crc = u32::from_le_bytes(bytes[MANIFEST_CRC..].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..MANIFEST_CRC]) != crc {
            return ManifestState::Malformed("checksum mismatch".into());
        }
        let (floor, first_seq, newest) = (u64_at(MANIFEST_FLOOR), u64_at(MANIFEST_FIRST_SEQ), u64_at(MANIFEST_NEWEST));
        let m = match (SegmentId::from_disk(floor), SegmentId::from_disk(newest)) {
            (Some(floor), Some(newest)) if floor <= newest && first_seq != 0 => Manifest { floor, first_seq, newest },
            _ => {
                return ManifestState::Malformed(format!(
                    "its fields disagree (floor {floor}, newest {newest}, first sequence {first_seq})"
                ));
            }
        };
        ManifestState::Valid(m)
    }

    /// Durably replaces the MANIFEST: temp file, fsync, rename, directory
    /// fsync. A crash leaves the old one or the new one, never a mix.
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("MANIFEST.tmp");
        let path = dir.join(MANIFEST);
        let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        f.write_all(&self.encode()).map_err(Error::io("writing", &tmp))?;
        f.sync_all().map_err(Error::io("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("renaming", &path))?;
        sync_dir(dir)
    }
}

pub(crate) fn read_manifest(dir: &Path) -> Result<ManifestState> {
    let path = dir.join(MANIFEST);
    match fs::read(&path) {
        Ok(bytes) => Ok(Manifest::decode(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ManifestState::Missing),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// The manifest the writer and the compaction finisher share: every change
/// goes through `update`, which writes it under the lock, so the two never
/// store one another's stale fields.
#[derive(Clone)]
pub(crate) struct SharedManifest {
    dir: PathBuf,
    current: Arc<Mutex<Manifest>>,
}

impl SharedManifest {
    pub(crate) fn new(dir: &Path, m: Manifest) -> SharedManifest {
        SharedManifest { dir: dir.to_path_buf(), current: Arc::new(Mutex::new(m)) }
    }

    pub(crate) fn get(&self) -> Manifest {
        *self.current.lock().expect("manifest lock poisoned")
    }

    /// Changes the manifest and stores it durably; on failure the old one
    /// stays in force (in memory and on disk).
    pub(crate) fn update(&self, change: impl FnOnce(&mut Manifest)) -> Result<()> {
        let mut current = self.current.lock().expect("manifest lock poisoned");
        let mut next = *current;
        change(&mut next);
        if next == *current {
            return Ok(());
        }
        next.store(&self.dir)?;
        *current = next;
        Ok(())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("syncing directory", dir))
}

/// Injected I/O faults, for tests: the next `n` writes (or syncs) of log
/// files fail. Production passes none; the check is one branch per write.
#[derive(Default, Debug)]
pub struct Faults {
    /// Writes that succeed before the `writes` that fail.
    skip: AtomicU32,
    /// When not empty, decides the next writes in turn: `true` fails one.
    script: Mutex<std::collections::VecDeque<bool>>,
    /// How much of each segment file a sync has made durable: what a power
    /// loss would leave (the power-loss tests cut their copies there).
    durable: Mutex<std::collections::HashMap<PathBuf, u64>>,
    writes: AtomicU32,
    syncs: AtomicU32,
    short: AtomicBool,
    enospc: AtomicBool,
}

// What tests arm; production builds only ever read an unarmed `Faults`.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
impl Faults {
    /// The next `n` writes fail: with ENOSPC or EIO, and `short` ones write
    /// half their bytes first.
    pub fn fail_writes(&self, n: u32, short: bool, enospc: bool) {
        self.fail_writes_after(0, n, short, enospc);
    }

    /// Like `fail_writes`, after `skip` writes that succeed.
    pub fn fail_writes_after(&self, skip: u32, n: u32, short: bool, enospc: bool) {
        self.short.store(short, Ordering::SeqCst);
        self.enospc.store(enospc, Ordering::SeqCst);
        self.skip.store(skip, Ordering::SeqCst);
        self.writes.store(n, Ordering::SeqCst);
    }

    /// The next writes go as `script` says, one entry each: `true` fails
    /// that write (with ENOSPC), `false` lets it through.
    pub fn script_writes(&self, script: &[bool]) {
        self.enospc.store(true, Ordering::SeqCst);
        self.short.store(false, Ordering::SeqCst);
        self.script.lock().expect("faults lock").extend(script.iter().copied());
    }

    /// Whether every fault armed so far has fired.
    pub fn spent(&self) -> bool {
        self.writes.load(Ordering::SeqCst) == 0
            && self.syncs.load(Ordering::SeqCst) == 0
            && self.script.lock().expect("faults lock").is_empty()
    }

    /// How many bytes of each segment file are durable (synced).
    pub fn durable_lengths(&self) -> std::collections::HashMap<PathBuf, u64> {
        self.durable.lock().expect("faults lock").clone()
    }

    pub(crate) fn note_durable(&self, path: &Path, len: u64) {
        self.durable.lock().expect("faults lock").insert(path.to_path_buf(), len);
    }

    fn fail_next_write(&self) -> bool {
        if let Some(fail) = self.script.lock().expect("faults lock").pop_front() {
            return fail;
        }
        !Faults::take(&self.skip) && Faults::take(&self.writes)
    }

    /// The next `n` fdatasyncs fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.syncs.store(n, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)).is_ok()
    }
}

fn write_all(file: &mut File, bytes: &[u8], faults: &Option<Arc<Faults>>) -> std::io::Result<()> {
    if let Some(f) = faults
        && f.fail_next_write()
    {
        if f.short.load(Ordering::SeqCst) {
            file.write_all(&bytes[..bytes.len() / 2])?;
        }
        let code = if f.enospc.load(Ordering::SeqCst) { libc::ENOSPC } else { libc::EIO };
        return Err(std::io::Error::from_raw_os_error(code));
    }
    file.write_all(bytes)
}

/// The segment being appended to.
pub(crate) struct ActiveSegment {
    pub(crate) id: SegmentId,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) len: u64,
    /// Writeback has been started for the bytes before this offset.
    hinted: u64,
    faults: Option<Arc<Faults>>,
}

/// Start writeback every this many bytes, so an fsync (at a segment roll, a
/// compaction, `sync=always`) finds little left to write and stalls little.
const WRITEBACK_HINT: u64 = 1 << 20;

impl ActiveSegment {
    /// Creates a new segment with its header; the file and the directory
    /// entry are synced before it is used, whatever the sync policy.
    pub(crate) fn create(dir: &Path, id: SegmentId, faults: &Option<Arc<Faults>>) -> Result<ActiveSegment> {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(Error::io("creating segment", &path))?;
        let written = write_all(&mut file, &segment_header(id), faults).and_then(|()| file.sync_all());
        if let Err(e) = written {
            // Leave no half-made segment behind.
            let _ = std::fs::remove_file(&path);
            return Err(Error::io("writing segment header", &path)(e));
        }
        sync_dir(dir)?;
        if let Some(f) = faults {
            f.note_durable(&path, SEGMENT_HEADER_LEN as u64);
        }
        Ok(ActiveSegment { id, path, file, len: SEGMENT_HEADER_LEN as u64, hinted: 0, faults: faults.clone() })
    }

    /// Reopens an existing segment for appending after `valid_len` bytes,
    /// cutting off anything beyond (a torn tail).
    pub(crate) fn reopen(
        dir: &Path,
        id: SegmentId,
        valid_len: u64,
        faults: &Option<Arc<Faults>>,
    ) -> Result<ActiveSegment> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new().append(true).open(&path).map_err(Error::io("opening segment", &path))?;
        let on_disk = file.metadata().map_err(Error::io("reading metadata of", &path))?.len();
        if on_disk != valid_len {
            file.set_len(valid_len).map_err(Error::io("truncating torn tail of", &path))?;
            file.sync_all().map_err(Error::io("syncing", &path))?;
        }
        if let Some(f) = faults {
            f.note_durable(&path, valid_len);
        }
        Ok(ActiveSegment { id, path, file, len: valid_len, hinted: valid_len, faults: faults.clone() })
    }

    /// Appends `bytes`. On failure the file may hold part of them: the
    /// caller cuts it back with `truncate`.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_all(&mut self.file, bytes, &self.faults)?;
        self.len += bytes.len() as u64;
        if self.len - self.hinted >= WRITEBACK_HINT {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on our own open descriptor; it only
            // starts writeback of the range and has no memory effects.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.hinted as i64,
                    (self.len - self.hinted) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.hinted = self.len;
        }
        Ok(())
    }

    /// Cuts the file back to `len` bytes (the end of the last good batch).
    pub(crate) fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.len = len;
        self.hinted = self.hinted.min(len);
        self.file.set_len(len)
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        sync_file(&self.file, &self.faults, &self.path, self.len)
    }

    /// What a sync of the segment as it is now needs, to run on another
    /// thread while writes go on (they only add bytes past `len`).
    pub(crate) fn sync_job(&self) -> std::io::Result<SyncJob> {
        Ok(SyncJob {
            id: self.id,
            file: self.file.try_clone()?,
            faults: self.faults.clone(),
            path: self.path.clone(),
            len: self.len,
        })
    }
}

/// An fdatasync of a segment, made durable up to `len` at least.
pub(crate) struct SyncJob {
    pub(crate) id: SegmentId,
    file: File,
    faults: Option<Arc<Faults>>,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
}

impl SyncJob {
    pub(crate) fn run(&self) -> std::io::Result<()> {
        sync_file(&self.file, &self.faults, &self.path, self.len)
    }
}

/// fdatasync, or the injected failure under test.
fn sync_file(file: &File, faults: &Option<Arc<Faults>>, path: &Path, len: u64) -> std::io::Result<()> {
    if let Some(f) = faults
        && Faults::take(&f.syncs)
    {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    file.sync_data()?;
    if let Some(f) = faults {
        f.note_durable(path, len);
    }
    Ok(())
}
