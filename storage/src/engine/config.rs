//! The engine's configuration, and the test hooks it carries when the
//! `testing` feature is on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::segment::Faults;
use crate::state::{Limits, State};

/// When acknowledged writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync before any reply of a batch (group commit).
    Always,
    /// fdatasync about once a second: a power loss can lose about a second of
    /// acknowledged writes; a process crash loses nothing.
    #[default]
    EverySec,
    /// Leave it to the OS.
    Never,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "everysec" => Ok(SyncPolicy::EverySec),
            "never" => Ok(SyncPolicy::Never),
            other => Err(format!("unknown sync policy {other:?}; use always, everysec or never")),
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncPolicy::Always => "always",
            SyncPolicy::EverySec => "everysec",
            SyncPolicy::Never => "never",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub limits: Limits,
    /// Most commands applied in one batch.
    pub max_batch: usize,
    /// Capacity of the request channel, in messages.
    pub queue_capacity: usize,
    /// Most expired entries removed per loop.
    pub expire_budget: usize,
    /// Apply commands on the threads that send them (under `everysec` and
    /// `never`); false sends every command through the engine thread, as
    /// `always` does. (On by default; benches compare the two.)
    pub apply_on_callers: bool,
    /// Compaction starts when the log is over twice the live data and over
    /// this size.
    pub compact_min_bytes: u64,
    /// Called at named points inside the writer (tests use it to copy the
    /// data directory at every step of a compaction). Feature `testing`.
    #[cfg(feature = "testing")]
    pub hook: Option<Hook>,
    /// Injected I/O faults (tests). Feature `testing`.
    #[cfg(feature = "testing")]
    pub faults: Option<Arc<Faults>>,
    /// Arena pages of this size instead of the cap's (tests make them small,
    /// so reclaim runs all the time). Feature `testing`.
    #[cfg(feature = "testing")]
    pub arena_page_bytes: Option<usize>,
}

/// A callback into the writer thread at a named point; see [`HookPoint`].
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn(&HookPoint<'_>) + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// Where the writer is, with its state, when a [`Hook`] is called.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub struct HookPoint<'a> {
    pub point: &'static str,
    pub dir: &'a Path,
    pub state: &'a State,
    pub now: u64,
}

impl Config {
    /// The test hooks, when the `testing` feature is on; production builds
    /// have none.
    pub(super) fn test_hooks(&self) -> (Option<Hook>, Option<Arc<Faults>>) {
        #[cfg(feature = "testing")]
        return (self.hook.clone(), self.faults.clone());
        #[cfg(not(feature = "testing"))]
        return (None, None);
    }

    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            sync: SyncPolicy::EverySec,
            segment_bytes: 64 << 20,
            limits: Limits::default(),
            max_batch: 1024,
            queue_capacity: 4096,
            expire_budget: 1000,
            apply_on_callers: true,
            compact_min_bytes: 64 << 20,
            #[cfg(feature = "testing")]
            hook: None,
            #[cfg(feature = "testing")]
            faults: None,
            #[cfg(feature = "testing")]
            arena_page_bytes: None,
        }
    }
}
