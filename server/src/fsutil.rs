//! File writes that survive a crash, for the factory's blobs and the CLI's checkpoints alike.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one, never a part,
/// even if the process dies mid-write. The bytes go to a temporary sibling of `path` (the same
/// file system, so the rename is atomic); see [`write_atomic_via`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.tmp",
        crate::factory::ids::new_id("part")
    ));
    write_atomic_via(&tmp, path, bytes)
}

/// Writes `bytes` to `tmp` (which must be on `path`'s file system: the factory keeps its
/// temporary files in one folder it empties at start), syncs it, renames it over `path`, and
/// syncs the folder. On any error `tmp` is removed.
pub fn write_atomic_via(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp, path)?;
        if let Some(parent) = path.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob.bin");
        super::write_atomic(&path, b"old").unwrap();
        super::write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file itself remains");
        // A folder that does not exist is an error, and nothing is left behind.
        assert!(super::write_atomic(&dir.path().join("no/such/blob"), b"x").is_err());
    }
}
