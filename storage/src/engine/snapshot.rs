//! Online backups. A snapshot is the log as of one moment between batches:
//! hard links, in a directory of the data directory, to every segment from
//! the floor to the newest and to the MANIFEST, with the active segment's
//! length at that moment. Taking one costs the writer a few `link()` calls;
//! copying it runs anywhere else while writes go on. Closed segments never
//! change; the active one only grows past the recorded length; compaction
//! may unlink the originals, but the links keep their data; and a MANIFEST
//! update replaces the file by rename, so the link keeps the old one. A copy
//! of the snapshot is therefore a data directory as it was at that moment:
//! every write acknowledged before it is in it, and it opens (and passes
//! `check`) like any other.
//!
//! Snapshot directories are named `snapshot-*`; one left by a crash is
//! removed at the next open.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::writer::Writer;
use crate::error::{Error, Result};
use crate::segment::{MANIFEST, list_segments, segment_path, sync_dir};

/// Where snapshot directories go and how they are named.
pub(crate) const SNAPSHOT_PREFIX: &str = "snapshot-";

/// One file of a snapshot and how many of its bytes belong to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub name: String,
    pub len: u64,
}

/// The log as of one moment, held by hard links until dropped.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    /// The segments, oldest first, then the MANIFEST.
    pub files: Vec<SnapshotFile>,
}

impl Snapshot {
    /// Bytes in the snapshot.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }

    /// Reads up to `buf.len()` bytes of `name` at `offset`, never past the
    /// file's length in the snapshot; returns how many were read.
    pub fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let f = self.files.iter().find(|f| f.name == name).ok_or_else(|| {
            Error::Config(format!("{name:?} is not a file of this snapshot; the files are listed in its plan"))
        })?;
        let want = f.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let path = self.dir.join(name);
        let file = File::open(&path).map_err(Error::io("opening", &path))?;
        let mut done = 0;
        while done < want {
            let n = file.read_at(&mut buf[done..want], offset + done as u64).map_err(Error::io("reading", &path))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Writes the snapshot to `dest` as a data directory (created; it must
    /// not exist or be empty), every file synced; returns the bytes copied.
    pub fn copy_to(&self, dest: &Path) -> Result<u64> {
        prepare_dest(dest)?;
        let mut buf = vec![0u8; 1 << 20];
        for f in &self.files {
            let path = dest.join(&f.name);
            let mut out = File::create(&path).map_err(Error::io("creating", &path))?;
            let mut offset = 0;
            while offset < f.len {
                let n = self.read_at(&f.name, offset, &mut buf)?;
                if n == 0 {
                    return Err(Error::Config(format!("{} ended at {offset} of {} bytes", f.name, f.len)));
                }
                out.write_all(&buf[..n]).map_err(Error::io("writing", &path))?;
                offset += n as u64;
            }
            out.sync_all().map_err(Error::io("syncing", &path))?;
        }
        sync_dir(dest)?;
        Ok(self.bytes())
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("could not remove the snapshot {}: {e}", self.dir.display());
        }
    }
}

/// Creates `dest` for a backup, refusing one that holds anything.
pub fn prepare_dest(dest: &Path) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(dest)
        && entries.next().is_some()
    {
        return Err(Error::Config(format!("{} is not empty; back up into a new or empty directory", dest.display())));
    }
    std::fs::create_dir_all(dest).map_err(Error::io("creating", dest))
}

/// Removes snapshot directories a crash left behind.
pub(crate) fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX)) && e.path().is_dir() {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!("removed a snapshot left by an earlier run: {}", e.path().display()),
                Err(err) => tracing::warn!("could not remove the old snapshot {}: {err}", e.path().display()),
            }
        }
    }
}

impl Writer {
    /// Takes a snapshot (between batches, after the last one is written).
    pub(super) fn snapshot(&mut self) -> Result<Snapshot> {
        // A finishing compaction moves the floor and unlinks segments: let
        // it end first, so the MANIFEST and the segments agree.
        self.join_finisher();
        self.snapshots += 1;
        let dir = self.dir.join(format!("{SNAPSHOT_PREFIX}{}-{}", std::process::id(), self.snapshots));
        std::fs::create_dir(&dir).map_err(Error::io("creating", &dir))?;
        let taken = (|| {
            let m = self.manifest.get();
            let mut files = Vec::new();
            for id in list_segments(&self.dir)?.into_iter().filter(|id| *id >= m.floor && *id <= m.newest) {
                let from = segment_path(&self.dir, id);
                let name = from.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                let to = dir.join(&name);
                std::fs::hard_link(&from, &to).map_err(Error::io("linking (backups need hard links)", &to))?;
                let len = if id == self.active.id {
                    self.active.len
                } else {
                    std::fs::metadata(&from).map_err(Error::io("reading", &from))?.len()
                };
                files.push(SnapshotFile { name, len });
            }
            let manifest = self.dir.join(MANIFEST);
            std::fs::hard_link(&manifest, dir.join(MANIFEST)).map_err(Error::io("linking", &manifest))?;
            let len = std::fs::metadata(&manifest).map_err(Error::io("reading", &manifest))?.len();
            files.push(SnapshotFile { name: MANIFEST.into(), len });
            Ok(files)
        })();
        match taken {
            Ok(files) => Ok(Snapshot { dir, files }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}
