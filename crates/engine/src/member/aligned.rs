//! Byte buffers whose start is aligned to a memory page, as `O_DIRECT` I/O needs (the
//! device DMAs straight into them). A `Vec<u8>` cannot promise that: its allocator only
//! promises the alignment of `u8`.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`]: a page, which is at least the logical block size of
/// any device `O_DIRECT` is used on here (512 or 4096).
pub const ALIGN: usize = 4096;

/// A zero-initialised, page-aligned, fixed-length byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively (like a `Box<[u8]>`); nothing in it is
// tied to a thread.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, as `Box<[u8]>` does.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes starting at a multiple of [`ALIGN`].
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            // A dangling pointer that is still aligned: valid for a zero-length slice.
            let ptr = NonNull::new(ALIGN as *mut u8).expect("non-zero");
            return AlignedBuf { ptr, len };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (len > 0).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout);
        };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, ALIGN).expect("a buffer size below isize::MAX")
    }
}

impl Default for AlignedBuf {
    /// An empty buffer (no allocation).
    fn default() -> AlignedBuf {
        AlignedBuf::zeroed(0)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout, freed only here.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes (zeroed at allocation) owned by
        // `self` for the lifetime of the borrow; for len 0 it is aligned and non-null.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// Whether `p` starts at a multiple of `align` (a power of two).
pub fn is_aligned(p: *const u8, align: usize) -> bool {
    (p as usize) & (align - 1) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_writable() {
        for len in [0, 1, 4095, 4096, 1 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(is_aligned(b.as_ptr(), ALIGN), "len {len}");
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
    }
}
