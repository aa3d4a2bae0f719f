//! `kind = "file"`: newline-delimited JSON files with size-based rotation. A batch is
//! acknowledged only after it was written and fsynced; a failed write is cut off again, so a
//! retry never leaves half a line behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Exporter, Limits, Outcome, SendError};
use crate::config::Errors;
use crate::queue::Record;

/// Bytes gathered before one `write` to the file.
const WRITE_CHUNK: usize = 64 << 10;

pub const LIMITS: Limits = Limits {
    max_batch_size: 100_000,
    default_batch_size: 5_000,
    max_batch_bytes: 64 << 20,
    default_batch_interval: Duration::from_millis(200),
    max_in_flight_requests: 1,
    default_in_flight_requests: 1,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileExport {
    pub path: String,
    pub rotate_size: Option<String>,
    pub max_files: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct FileExportConfig {
    /// Directory the files are written to (created if missing).
    pub path: PathBuf,
    pub rotate_size: u64,
    /// Rotated files to keep (oldest deleted first); `None` keeps all.
    pub max_files: Option<usize>,
}

impl RawFileExport {
    pub fn validate(&self, path: &str, errs: &mut Errors) -> FileExportConfig {
        if self.path.trim().is_empty() {
            errs.push(format!("{path}.path"), "must not be empty");
        }
        let rotate_size = errs.size(
            &format!("{path}.rotate_size"),
            self.rotate_size.as_deref(),
            64 << 20,
            4096,
            u64::MAX,
        );
        let max_files = self
            .max_files
            .map(|n| errs.int(&format!("{path}.max_files"), Some(n), 1, 1, 1_000_000) as usize);
        FileExportConfig {
            path: PathBuf::from(&self.path),
            rotate_size,
            max_files,
        }
    }
}

struct Active {
    file: File,
    len: u64,
}

pub struct FileExporter {
    config: FileExportConfig,
    prefix: String,
    active: Option<Active>,
    buf: Vec<u8>,
}

impl FileExporter {
    /// `prefix` names the files: `<prefix>.ndjson`, rotated to `<prefix>.<unix_ms>.ndjson`.
    pub fn new(config: FileExportConfig, prefix: &str) -> FileExporter {
        FileExporter {
            config,
            prefix: prefix.to_string(),
            active: None,
            buf: Vec::new(),
        }
    }

    fn current_path(&self) -> PathBuf {
        self.config.path.join(format!("{}.ndjson", self.prefix))
    }

    fn open(&mut self) -> std::io::Result<()> {
        if self.active.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.config.path)?;
        let path = self.current_path();
        drop_partial_line(&path)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        sync_dir(&self.config.path)?;
        self.active = Some(Active { file, len });
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(active) = self.active.take() {
            active.file.sync_all()?;
            let rotated =
                self.config
                    .path
                    .join(format!("{}.{}.ndjson", self.prefix, crate::time::now_ms()));
            std::fs::rename(self.current_path(), &rotated)?;
            tracing::info!(file = %rotated.display(), bytes = active.len, "rotated export file");
        }
        self.open()?;
        if let Some(max) = self.config.max_files {
            self.prune(max)?;
        }
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `max`.
    fn prune(&self, max: usize) -> std::io::Result<()> {
        let mut rotated: Vec<(i64, PathBuf)> = std::fs::read_dir(&self.config.path)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let ms = name
                    .strip_prefix(&format!("{}.", self.prefix))?
                    .strip_suffix(".ndjson")?
                    .parse()
                    .ok()?;
                Some((ms, e.path()))
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(max);
        for (_, p) in rotated.into_iter().take(excess) {
            std::fs::remove_file(&p)?;
            tracing::info!(file = %p.display(), "deleted old export file (max_files)");
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &[Record]) -> std::io::Result<()> {
        let total: u64 = batch.iter().map(|r| r.payload.len() as u64 + 1).sum();
        self.open()?;
        let len = self.active.as_ref().map_or(0, |a| a.len);
        if len > 0 && len + total > self.config.rotate_size {
            self.rotate()?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(std::io::Error::other("export file is not open"));
        };
        let before = active.len;
        // Written through a buffer of WRITE_CHUNK, not the whole batch at once: a 5,000-record
        // batch would keep a ~1.5 MB buffer resident for the export's lifetime.
        let buf = &mut self.buf;
        let mut write = || -> std::io::Result<()> {
            buf.clear();
            for r in batch {
                if buf.len() + r.payload.len() + 1 > WRITE_CHUNK && !buf.is_empty() {
                    active.file.write_all(buf)?;
                    buf.clear();
                }
                buf.extend_from_slice(&r.payload);
                buf.push(b'\n');
            }
            active.file.write_all(buf)?;
            active.file.sync_data()
        };
        let written = write();
        if self.buf.capacity() > 2 * WRITE_CHUNK {
            // One record larger than a chunk grew it: give that back.
            self.buf = Vec::with_capacity(WRITE_CHUNK);
        }
        match written {
            Ok(()) => {
                active.len += total;
                Ok(())
            }
            Err(e) => {
                // Cut off what was written so a retry does not leave half a line behind.
                let _ = active.file.set_len(before);
                self.active = None;
                Err(e)
            }
        }
    }
}

/// A crash in the middle of a write can leave half a line at the end of the file. It was never
/// acknowledged (that happens after fsync), so it is cut off: the record is sent again whole.
fn drop_partial_line(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                tracing::warn!(file = %path.display(), bytes = len - keep, "cut off a partial last line left by a crash; its records are sent again");
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(());
        }
        end = start;
    }
    if len > 0 {
        file.set_len(0)?;
        file.sync_all()?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Exporter for FileExporter {
    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        let path = self.config.path.clone();
        // File I/O blocks: on the multi-threaded runtime (the daemon's) tell tokio so.
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.write_batch(batch))
            }
            _ => self.write_batch(batch),
        };
        match result {
            Ok(()) => Ok(vec![Outcome::Delivered; batch.len()]),
            Err(e) => Err(SendError::transient(format!(
                "cannot write to {}: {e}",
                path.display()
            ))),
        }
    }

    async fn close(&mut self) {
        if let Some(active) = self.active.take() {
            let _ = active.file.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, body: &str) -> Record {
        Record {
            id,
            at_ms: 0,
            payload: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn writes_ndjson_rotates_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileExportConfig {
            path: dir.path().join("out"),
            rotate_size: 4096,
            max_files: Some(2),
        };
        let mut ex = FileExporter::new(cfg, "s-e");
        let body = "x".repeat(1000);
        for i in 0..20 {
            ex.write_batch(&[rec(i, &body)]).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "current file + 2 rotated: {names:?}");
        assert!(names.contains(&"s-e.ndjson".to_string()));
        let current = std::fs::read_to_string(dir.path().join("out/s-e.ndjson")).unwrap();
        assert!(current.lines().all(|l| l == body));
    }

    #[test]
    fn a_partial_last_line_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-e.ndjson");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\"").unwrap();
        let cfg = FileExportConfig {
            path: dir.path().to_path_buf(),
            rotate_size: 1 << 20,
            max_files: None,
        };
        let mut ex = FileExporter::new(cfg, "s-e");
        ex.write_batch(&[rec(3, "{\"a\":3}")]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    /// A batch larger than the write chunk, with a record larger than a chunk in it, lands
    /// whole and in order; the buffer that record grew is given back.
    #[test]
    fn batches_larger_than_a_chunk_are_written_whole_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileExportConfig {
            path: dir.path().to_path_buf(),
            rotate_size: 64 << 20,
            max_files: None,
        };
        let mut ex = FileExporter::new(cfg, "s-e");
        let mut batch: Vec<Record> = (0..1_000)
            .map(|i| rec(i, &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(200))))
            .collect();
        batch.insert(500, rec(10_000, &"L".repeat(3 * WRITE_CHUNK)));
        ex.write_batch(&batch).unwrap();
        let written = std::fs::read(dir.path().join("s-e.ndjson")).unwrap();
        let mut expected = Vec::new();
        for r in &batch {
            expected.extend_from_slice(&r.payload);
            expected.push(b'\n');
        }
        assert!(expected.len() > 4 * WRITE_CHUNK);
        assert_eq!(written, expected);
        assert!(
            ex.buf.capacity() <= 2 * WRITE_CHUNK,
            "{}",
            ex.buf.capacity()
        );
        assert_eq!(ex.active.as_ref().unwrap().len, expected.len() as u64);
    }
}
