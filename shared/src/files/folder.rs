//! File bodies as files under a folder of the data directory (`<data dir>/objects`), for the
//! local gateway.
//!
//! A write goes to a temporary file beside its target, is synced, then renamed over it: a
//! process killed mid-write leaves the old object or the new one, never a torn one. Temporary
//! names contain `#`, which no key may, so no key ever names a leftover temporary file.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::files::FileBodies;

/// The largest object read back: above OpenAI's 200 MB file limit, so every file the API
/// accepts fits, while a stray huge file cannot exhaust memory.
pub const MAX_OBJECT_BYTES: u64 = 256 << 20;
/// S3's longest key.
const MAX_KEY_BYTES: usize = 1024;

/// Numbers temporary files, so concurrent writes of one key never share one.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

pub struct FolderBodies {
    root: PathBuf,
}

impl FolderBodies {
    /// Objects live under `root` (created on the first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The path of a key, if the key is well-formed: segments of `[A-Za-z0-9_.-]` joined by
    /// `/`, none empty, `.` or `..`, so no key reaches outside `root`.
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let well_formed = !key.is_empty()
            && key.len() <= MAX_KEY_BYTES
            && key.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            });
        if !well_formed {
            return Err(StoreError::Backend(format!(
                "object key `{}` is not a well-formed key",
                key.escape_debug()
            )));
        }
        Ok(self.root.join(key))
    }
}

fn io_failure(action: &str, key: &str, error: &std::io::Error) -> StoreError {
    StoreError::Backend(format!("{action} object `{key}`: {error}"))
}

/// Runs blocking file I/O off the async threads.
async fn blocking<T: Send + 'static>(
    what: String,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Backend(format!("{what}: the file task failed: {e}")))?
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(
        "{name}#{}-{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Reads a file of at most `MAX_OBJECT_BYTES`, checked before allocating and while reading
/// (the file may grow meanwhile).
fn read_bounded(path: &Path, key: &str) -> Result<Option<Bytes>, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_failure("opening", key, &e)),
    };
    let declared = file
        .metadata()
        .map_err(|e| io_failure("reading", key, &e))?
        .len();
    let too_large = || {
        StoreError::Backend(format!(
            "object `{key}` is larger than the {MAX_OBJECT_BYTES} bytes a read allows"
        ))
    };
    if declared > MAX_OBJECT_BYTES {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    file.take(MAX_OBJECT_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| io_failure("reading", key, &e))?;
    if body.len() as u64 > MAX_OBJECT_BYTES {
        return Err(too_large());
    }
    Ok(Some(Bytes::from(body)))
}

#[async_trait]
impl FileBodies for FolderBodies {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(format!("writing object `{key}`"), move || {
            write_atomically(&path, &body).map_err(|e| io_failure("writing", &key, &e))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(format!("reading object `{key}`"), move || {
            read_bounded(&path, &key)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(
            format!("deleting object `{key}`"),
            move || match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_failure("deleting", &key, &e)),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::test_dir;

    #[tokio::test]
    async fn objects_round_trip_are_replaced_and_deleted() {
        let dir = test_dir("folder-round-trip");
        let bodies = FolderBodies::new(dir.join("objects"));
        let key = crate::files::part_key("upload_1", "part_1");
        assert_eq!(bodies.get(&key).await.unwrap(), None);
        bodies
            .put(&key, Bytes::from_static(b"{\"a\":1}\n"))
            .await
            .unwrap();
        assert_eq!(
            bodies.get(&key).await.unwrap(),
            Some(Bytes::from_static(b"{\"a\":1}\n"))
        );
        bodies.put(&key, Bytes::from_static(b"new")).await.unwrap();
        assert_eq!(
            bodies.get(&key).await.unwrap(),
            Some(Bytes::from_static(b"new"))
        );
        // Written under the root at the key's path, with no temporary file left beside it.
        let folder = dir.join("objects/uploads/upload_1");
        let names: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["part_1"]);

        bodies.delete(&key).await.unwrap();
        assert_eq!(bodies.get(&key).await.unwrap(), None);
        bodies.delete(&key).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn keys_that_could_leave_the_root_are_refused() {
        let dir = test_dir("folder-keys");
        let bodies = FolderBodies::new(dir.join("objects"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), b"outside").unwrap();
        for key in [
            "../secret",
            "files/../../secret",
            "/etc/passwd",
            "files//a",
            "files/a/",
            "",
            ".",
            "files/a b",
            "files/a#1",
            "files\\a",
        ] {
            assert!(bodies.get(key).await.is_err(), "{key:?} was read");
            assert!(bodies.put(key, Bytes::new()).await.is_err(), "{key:?}");
            assert!(bodies.delete(key).await.is_err(), "{key:?}");
        }
        assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"outside");
        assert!(bodies.get("files/file-Ab_1.jsonl").await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_object_over_the_read_limit_is_refused() {
        let dir = test_dir("folder-limit");
        let bodies = FolderBodies::new(dir.join("objects"));
        std::fs::create_dir_all(dir.join("objects/files")).unwrap();
        // Sparse: the size is declared without writing 256 MiB.
        let file = std::fs::File::create(dir.join("objects/files/huge")).unwrap();
        file.set_len(MAX_OBJECT_BYTES + 1).unwrap();
        let error = bodies.get("files/huge").await.unwrap_err();
        assert!(error.to_string().contains("larger than"), "{error}");
        file.set_len(16).unwrap();
        assert_eq!(bodies.get("files/huge").await.unwrap().unwrap().len(), 16);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
