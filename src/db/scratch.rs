//! A redb storage backend that reads a database file and keeps every write in memory.
//!
//! redb writes even to open a file: the header's "open" flag at once, a recovery after a crash,
//! a commit of the allocator state at close. Through this backend it can open, recover and
//! verify a file (or be read for salvage) while the file keeps every byte. The locks go to the
//! real file, so a daemon that has it open is still seen (`DatabaseAlreadyOpen`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

const BLOCK: u64 = 4096;

pub(super) struct Scratch {
    /// Reads of the file's bytes.
    file: File,
    /// The same file, for redb's locks only: nothing is ever written through it.
    locks: FileBackend,
    state: Mutex<State>,
}

struct State {
    /// The length redb sees.
    len: u64,
    /// The file's bytes from here on read as zeros (redb shrank the storage, then grew it).
    floor: u64,
    /// Blocks redb wrote, by block number.
    blocks: HashMap<u64, Vec<u8>>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Scratch")
            .field("len", &state.len)
            .field("written_blocks", &state.blocks.len())
            .finish()
    }
}

impl Scratch {
    /// Opens `path` (read and write, as redb's locks need, but nothing is written).
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let reader = file.try_clone()?;
        let len = file.metadata()?.len();
        let locks = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self {
            file: reader,
            locks,
            state: Mutex::new(State {
                len,
                floor: len,
                blocks: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Block `n` as redb sees it: written, from the file, or zeros.
    fn block(&self, state: &State, n: u64) -> io::Result<Vec<u8>> {
        if let Some(b) = state.blocks.get(&n) {
            return Ok(b.clone());
        }
        let mut b = vec![0u8; BLOCK as usize];
        let start = n * BLOCK;
        if start < state.floor {
            let from_file = usize::try_from((state.floor - start).min(BLOCK)).unwrap_or(0);
            self.file.read_exact_at(&mut b[..from_file], start)?;
        }
        Ok(b)
    }

    /// Calls `each(block, offset in block, offset in data, length)` over `offset..offset+len`.
    fn spans(
        offset: u64,
        len: usize,
        mut each: impl FnMut(u64, usize, usize, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let within = usize::try_from(at % BLOCK).unwrap_or(0);
            let n = (BLOCK as usize - within).min(len - done);
            each(at / BLOCK, within, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl StorageBackend for Scratch {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state();
        if offset.saturating_add(out.len() as u64) > state.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the database",
            ));
        }
        Self::spans(offset, out.len(), |n, within, done, len| {
            let b = self.block(&state, n)?;
            out[done..done + len].copy_from_slice(&b[within..within + len]);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state();
        if len < state.len {
            state.floor = state.floor.min(len);
            state.blocks.retain(|n, _| n * BLOCK < len);
            if !len.is_multiple_of(BLOCK) {
                let n = len / BLOCK;
                let mut b = self.block(&state, n)?;
                let keep = usize::try_from(len % BLOCK).unwrap_or(0);
                b[keep..].fill(0);
                state.blocks.insert(n, b);
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        Self::spans(offset, data.len(), |n, within, done, len| {
            let mut b = self.block(&state, n)?;
            b[within..within + len].copy_from_slice(&data[done..done + len]);
            state.blocks.insert(n, b);
            Ok(())
        })?;
        state.len = state.len.max(offset.saturating_add(data.len() as u64));
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.locks.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.locks.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.locks.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.locks.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.locks.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.locks.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.locks.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_in_memory_and_read_back() {
        let dir = std::env::temp_dir().join(format!("orchard-scratch-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let s = Scratch::open(&path).unwrap();
        s.write(4090, &[1; 20]).unwrap();
        s.write(12_000, &[2; 10]).unwrap();
        assert_eq!(s.len().unwrap(), 12_010);
        let mut out = vec![0u8; 12_010];
        s.read(0, &mut out).unwrap();
        assert_eq!(out[..4090], original[..4090]);
        assert_eq!(out[4090..4110], [1; 20]);
        assert_eq!(out[4110..10_000], original[4110..]);
        assert!(out[10_000..12_000].iter().all(|&b| b == 0));
        assert_eq!(out[12_000..], [2; 10]);
        // Shrink, then grow: what was cut reads as zeros, from the file as from memory.
        s.set_len(5000).unwrap();
        s.set_len(8000).unwrap();
        let mut out = vec![0u8; 8000];
        s.read(0, &mut out).unwrap();
        assert_eq!(out[4110..5000], original[4110..5000]);
        assert!(out[5000..].iter().all(|&b| b == 0));
        assert!(s.read(7999, &mut [0u8; 2]).is_err());
        drop(s);
        assert_eq!(std::fs::read(&path).unwrap(), original, "the file changed");
        std::fs::remove_dir_all(&dir).ok();
    }
}
