//! The spool's active segment: a file whose disk blocks are reserved up front and which is
//! mapped into memory, so that appending a record is a copy into the page cache instead of a
//! `write(2)`.
//!
//! Why (loadtest/RESULTS.md, "Metering on vs off", has the figures): with a `write(2)` per
//! group of records, the syscall and ext4's buffered-write path (`ext4_da_write_begin`) were a
//! large share of the gateway's CPU per billable call. A store into a shared file mapping lands in the same page cache: it
//! survives the death of the process (SIGKILL) exactly as a completed `write(2)` does, and
//! `fdatasync` on the file writes it back for power loss as before. The kernel takes a page
//! fault the first time each page is touched (and again after writeback), once per ~18
//! records, instead of a syscall per group.
//!
//! The blocks are reserved with `posix_fallocate` before the file is mapped: a full disk is
//! then an error when a segment is opened (the caller refuses the call, as for a failed
//! write), never a SIGBUS when a page is first touched. The reserved tail reads as zeros; a
//! zero length is never a valid frame, so readers and recovery know where the records end
//! (`spool::parse_frames`). [`MappedSegment::finish`] truncates the file to what was written,
//! so every segment but the active one has exactly its records' size on disk.
//!
//! This is the crate's only `unsafe` code: mapping a file is unsafe because another process
//! truncating the file would make touching the mapping fault. The spool's directory belongs to
//! the gateway; the active segment is never released, and recovery runs before it is mapped.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

/// A segment file mapped for appending.
pub(crate) struct MappedSegment {
    file: File,
    map: MmapMut,
    /// Bytes written (the records end here; zeros follow up to the capacity).
    len: usize,
}

impl MappedSegment {
    /// Opens `path` (creating it if needed) whose first `written` bytes are records (0 for a
    /// new segment; what recovery left for the newest one), reserves disk blocks for
    /// `capacity` bytes (at least `written`) and maps them. Whatever the file held beyond
    /// `written` (the zeros of an earlier reservation) is space to append to.
    pub(crate) fn open(path: &Path, capacity: u64, written: u64) -> io::Result<MappedSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let size = file.metadata()?.len();
        if size < written {
            return Err(io::Error::other(format!(
                "{} holds {size} bytes, fewer than the {written} written",
                path.display()
            )));
        }
        let capacity = capacity.max(size).max(1);
        reserve(&file, capacity)?;
        let capacity = usize::try_from(capacity)
            .map_err(|_| io::Error::other("segment capacity exceeds the address space"))?;
        // SAFETY: the file is this spool's own segment, created or recovered by this process
        // and reserved to `capacity` bytes just above. Nothing in the gateway shrinks it while
        // it is mapped: `finish` unmaps before it truncates, and `Spool::release` never
        // deletes the active segment. (An operator truncating it by hand would crash the
        // gateway with SIGBUS; the module documentation says so.)
        let map = unsafe { MmapOptions::new().len(capacity).map_mut(&file)? };
        Ok(MappedSegment {
            file,
            map,
            len: written as usize,
        })
    }

    /// Bytes written.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// Bytes that can still be appended.
    pub(crate) fn remaining(&self) -> u64 {
        (self.map.len() - self.len) as u64
    }

    /// The next `n` bytes, to be filled by the caller, and counted as written; `None` if
    /// fewer than `n` remain (the spool rolls segments before that: this is its check).
    pub(crate) fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let at = self.len;
        let end = at.checked_add(n).filter(|&end| end <= self.map.len())?;
        self.len = end;
        Some(&mut self.map[at..end])
    }

    /// The file, to `fdatasync` it (which writes back pages dirtied through the mapping).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Unmaps the segment and truncates the file to what was written; returns the file for a
    /// last sync.
    pub(crate) fn finish(self) -> io::Result<File> {
        let MappedSegment { file, map, len } = self;
        drop(map);
        file.set_len(len as u64)?;
        Ok(file)
    }
}

/// Reserves disk blocks for the first `len` bytes of `file` and extends it to `len` if it is
/// shorter. `posix_fallocate` falls back to writing zeros on filesystems without `fallocate`.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::other("segment capacity exceeds off_t"))?;
    // SAFETY: a plain system call on a descriptor this function borrows for its duration.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_land_in_the_file_and_finish_cuts_the_reserved_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut s = MappedSegment::open(&path, 4096, 0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096, "reserved");
        s.append(5).unwrap().copy_from_slice(b"hello");
        assert_eq!((s.len(), s.remaining()), (5, 4091));
        assert!(
            s.append(4092).is_none(),
            "no room: refused, nothing counted"
        );
        assert_eq!(s.len(), 5);
        // Visible to readers of the file before any sync or unmap: the page cache is shared.
        assert_eq!(&std::fs::read(&path).unwrap()[..6], b"hello\0");
        drop(s.finish().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        // Reopened, the content is kept and appends follow it.
        let mut s = MappedSegment::open(&path, 16, 5).unwrap();
        assert_eq!((s.len(), s.remaining()), (5, 11));
        s.append(6).unwrap().copy_from_slice(b" world");
        drop(s.finish().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        // A file reserved before (a roll that failed half-way) is empty space, not records.
        let reserved = dir.path().join("r.log");
        drop(MappedSegment::open(&reserved, 4096, 0).unwrap());
        let s = MappedSegment::open(&reserved, 8192, 0).unwrap();
        assert_eq!((s.len(), s.remaining()), (0, 8192));
        assert!(
            MappedSegment::open(&path, 16, 99).is_err(),
            "more written than the file holds"
        );
    }
}
