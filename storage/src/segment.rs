//! Segment files on disk: their names, creation (header, file and directory
//! synced), appending, and the small manifest that records the first live
//! segment after compaction or `clear`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::record::{SEGMENT_HEADER_LEN, SegmentId, segment_header};

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".log";
pub(crate) const MANIFEST: &str = "MANIFEST";

pub(crate) fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{PREFIX}{:016}{SUFFIX}", id.0))
}

/// Segment ids present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("reading directory", dir))? {
        let entry = entry.map_err(Error::io("reading directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(SUFFIX))
            && let Ok(n) = num.parse::<u64>()
        {
            ids.push(SegmentId(n));
        }
    }
    ids.sort();
    Ok(ids)
}

/// The first live segment recorded by the manifest (segments below it are
/// dead and ignored), or 0 when there is no manifest.
pub(crate) fn read_floor(dir: &Path) -> Result<SegmentId> {
    let path = dir.join(MANIFEST);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let text = text.trim();
            let floor = text.strip_prefix("floor ").and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| {
                Error::Config(format!("{} is malformed ({text:?}); expected `floor N`", path.display()))
            })?;
            Ok(SegmentId(floor))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SegmentId(0)),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// Durably records `floor` as the first live segment: temp file, fsync,
/// rename, directory fsync.
pub(crate) fn write_floor(dir: &Path, floor: SegmentId) -> Result<()> {
    let tmp = dir.join("MANIFEST.tmp");
    let path = dir.join(MANIFEST);
    let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    f.write_all(format!("floor {}\n", floor.0).as_bytes()).map_err(Error::io("writing", &tmp))?;
    f.sync_all().map_err(Error::io("syncing", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("renaming", &path))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("syncing directory", dir))
}

/// Injected I/O faults, for tests: the next `n` writes (or syncs) of log
/// files fail. Production passes none; the check is one branch per write.
#[derive(Default, Debug)]
pub struct Faults {
    writes: AtomicU32,
    syncs: AtomicU32,
    short: AtomicBool,
    enospc: AtomicBool,
}

impl Faults {
    /// The next `n` writes fail: with ENOSPC or EIO, and `short` ones write
    /// half their bytes first.
    pub fn fail_writes(&self, n: u32, short: bool, enospc: bool) {
        self.short.store(short, Ordering::SeqCst);
        self.enospc.store(enospc, Ordering::SeqCst);
        self.writes.store(n, Ordering::SeqCst);
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
        && Faults::take(&f.writes)
    {
        if f.short.load(Ordering::SeqCst) {
            file.write_all(&bytes[..bytes.len() / 2])?;
        }
        let code = if f.enospc.load(Ordering::SeqCst) { libc_enospc() } else { libc_eio() };
        return Err(std::io::Error::from_raw_os_error(code));
    }
    file.write_all(bytes)
}

const fn libc_enospc() -> i32 {
    28
}

const fn libc_eio() -> i32 {
    5
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
        if let Some(f) = &self.faults
            && Faults::take(&f.syncs)
        {
            return Err(std::io::Error::from_raw_os_error(libc_eio()));
        }
        self.file.sync_data()
    }
}
