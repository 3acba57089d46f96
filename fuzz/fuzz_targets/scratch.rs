//! Shared by the targets that need files: a scratch directory.

/// One scratch directory per process, in RAM when /dev/shm exists.
pub fn scratch() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap()
    })
    .path()
    .to_path_buf()
}
