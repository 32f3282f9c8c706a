//! Recycled I/O buffers: a reused buffer is already initialised, so reads and write
//! payloads need neither fresh zeroed memory nor page faults.

use std::sync::Mutex;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const KEEP: usize = 64;
const KEEP_MAX_CAP: usize = 33 << 20;
/// Most bytes kept in all: without it, 64 buffers of up to 33 MiB could pin
/// 2 GiB long after the clients that needed them are gone.
const KEEP_TOTAL: usize = 128 << 20;

/// A buffer of exactly `len` bytes (contents unspecified).
pub fn take(len: usize) -> Vec<u8> {
    let found = {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| free.swap_remove(i))
    };
    let mut b = found.unwrap_or_default();
    b.resize(len, 0);
    b
}

pub fn give(b: Vec<u8>) {
    if b.capacity() > KEEP_MAX_CAP || b.capacity() < 4096 {
        return;
    }
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    let kept: usize = free.iter().map(Vec::capacity).sum();
    if free.len() < KEEP && kept + b.capacity() <= KEEP_TOTAL {
        free.push(b);
    }
}
