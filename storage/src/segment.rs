//! Segment files on disk: their names, creation (header, file and directory
//! synced), appending, and the small manifest that records the first live
//! segment after compaction or `clear`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// The segment being appended to.
pub(crate) struct ActiveSegment {
    pub(crate) id: SegmentId,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) len: u64,
}

impl ActiveSegment {
    /// Creates a new segment with its header; the file and the directory
    /// entry are synced before it is used, whatever the sync policy.
    pub(crate) fn create(dir: &Path, id: SegmentId) -> Result<ActiveSegment> {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(Error::io("creating segment", &path))?;
        file.write_all(&segment_header(id)).map_err(Error::io("writing segment header", &path))?;
        file.sync_all().map_err(Error::io("syncing", &path))?;
        sync_dir(dir)?;
        Ok(ActiveSegment { id, path, file, len: SEGMENT_HEADER_LEN as u64 })
    }

    /// Reopens an existing segment for appending after `valid_len` bytes,
    /// cutting off anything beyond (a torn tail).
    pub(crate) fn reopen(dir: &Path, id: SegmentId, valid_len: u64) -> Result<ActiveSegment> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new().append(true).open(&path).map_err(Error::io("opening segment", &path))?;
        let on_disk = file.metadata().map_err(Error::io("reading metadata of", &path))?.len();
        if on_disk != valid_len {
            file.set_len(valid_len).map_err(Error::io("truncating torn tail of", &path))?;
            file.sync_all().map_err(Error::io("syncing", &path))?;
        }
        Ok(ActiveSegment { id, path, file, len: valid_len })
    }

    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
