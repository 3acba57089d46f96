//! Where keys and values live: items packed one after another into large
//! pages, instead of one heap allocation each.
//!
//! An item is `key_len * 2 + has_deadline | value_len | [deadline] | key |
//! value`, the first two as LEB128 varints (seven bits a byte, low bits
//! first: one byte below 128, two below 16384), with no padding, so a
//! 16-byte key with a 100-byte value takes 118 bytes, and 123 with a
//! deadline (one allocation of 118 bytes took a 128-byte allocator bin,
//! plus the allocator's own free lists in every fresh page; fixed
//! `u16`/`u32` lengths took 122). A deadline is five bytes, little-endian:
//! milliseconds after [`DEADLINE_BASE`] (2020-01-01), which reaches the
//! year 2054; one outside that range is the five bytes `ff ff ff ff ff`
//! followed by six bytes of unix milliseconds. The deadline lives in the
//! item, not in the index's entry, because most entries' deadlines are
//! read only with their key: a lookup compares the key, then checks the
//! deadline beside it. Items are bump-allocated
//! into the *active* page; when one does not fit, the page is sealed and a
//! new one opens. An item larger than a quarter of a page gets a page of its
//! own, sized to it.
//!
//! A [`Loc`] names an item: its page number and its offset, in 43 bits.
//! Items never move while something refers to them except
//! through [`Index::reclaim`](crate::index::Index::reclaim), which runs only
//! between batches.
//!
//! Freeing is bookkeeping: an overwritten or removed item stays readable (so
//! a batch whose write fails can put the old one back) and its bytes count as
//! dead in its page. Every page counts its live bytes; the index reclaims a
//! page by walking its items in order, moving the live ones to the active
//! page and fixing their slots, then dropping the page. Which page and when
//! is the index's choice ([`Arena::victim`]).

use cachet_types::MAX_DEADLINE;
use std::sync::mpsc::{Receiver, SyncSender};

use memmap2::MmapMut;

/// Bytes in a regular page, unless the cache is capped smaller (see
/// [`page_bytes_for`]). Pages are anonymous maps of their own, not heap
/// allocations (the allocator adds a header slice to every large block,
/// which cost 6% of a 1 MiB page). Pages are not advised to use
/// transparent huge pages. While serving, faulting in a 2 MiB huge page
/// took 4.3 ms, all of it in the one set that opened the page (one set in
/// 17,772 with 118-byte items stalled the writer that long, `cargo bench -p
/// cachet-benches --bench growth`); 512 small faults spread the same work
/// over as many sets. During replay huge pages made a warm restart of 1M
/// keys faster (136 against 179 ms), but on a VM that hands free memory
/// back to its host, a huge page comes from exactly that memory, and a
/// restart's 54 huge-page faults then took about 7 ms each: 380-660 ms in
/// 5 restarts of 9 (`SECTIONS=memory benches/compare.sh`), against 178-218
/// ms in all 6 without them.
pub(crate) const PAGE_BYTES: usize = 2 << 20;
const _: () = assert!(PAGE_BYTES <= 1 << OFFSET_BITS, "an offset in a page fits a Loc");

/// The smallest page.
pub(crate) const MIN_PAGE_BYTES: usize = 4 << 10;

/// The page size for a cache capped at `max_memory` bytes: at most a
/// sixty-fourth of the cap, so the page being filled and the dead bytes
/// reclaim allows stay small beside it; 2 MiB when uncapped.
pub(crate) fn page_bytes_for(max_memory: Option<u64>) -> usize {
    max_memory.map_or(PAGE_BYTES, |m| {
        let target = usize::try_from(m / 64).unwrap_or(PAGE_BYTES).clamp(MIN_PAGE_BYTES, PAGE_BYTES);
        // A power of two no larger than the target.
        1 << target.ilog2()
    })
}

/// Bytes of `n` as a LEB128 varint: one per started seven bits.
const fn varint_len(n: usize) -> usize {
    if n < 1 << 7 { 1 } else { (usize::BITS - n.leading_zeros()).div_ceil(7) as usize }
}

/// Writes `n` as a LEB128 varint at the start of `b`; returns its length.
fn write_varint(b: &mut [u8], mut n: usize) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        b[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    b[i] = n as u8;
    i + 1
}

/// Reads a LEB128 varint at `b[at..]`; returns it and the position after it.
#[inline]
fn read_varint(b: &[u8], at: usize) -> (usize, usize) {
    let first = b[at];
    if first < 0x80 {
        return (usize::from(first), at + 1);
    }
    let (mut n, mut shift, mut i) = (usize::from(first & 0x7f), 7, at + 1);
    loop {
        let byte = b[i];
        n |= usize::from(byte & 0x7f) << shift;
        i += 1;
        if byte < 0x80 {
            return (n, i);
        }
        shift += 7;
    }
}

/// Deadlines in items count milliseconds from 2020-01-01 00:00 UTC.
pub(crate) const DEADLINE_BASE: u64 = 1_577_836_800_000;
/// A short deadline's five bytes: at most this many ms after the base
/// (all ones marks the long form).
const SHORT_DEADLINE: u64 = (1 << 40) - 2;
/// The long form: the marker and six bytes of unix ms.
const LONG_DEADLINE_LEN: usize = 5 + 6;

/// Bytes a deadline takes in an item (0 for none).
fn deadline_len(expires: u64) -> usize {
    match expires {
        0 => 0,
        e if e >= DEADLINE_BASE && e - DEADLINE_BASE <= SHORT_DEADLINE => 5,
        _ => LONG_DEADLINE_LEN,
    }
}

fn write_deadline(b: &mut [u8], expires: u64) -> usize {
    match deadline_len(expires) {
        0 => 0,
        5 => {
            b[..5].copy_from_slice(&(expires - DEADLINE_BASE).to_le_bytes()[..5]);
            5
        }
        _ => {
            b[..5].fill(0xff);
            b[5..LONG_DEADLINE_LEN].copy_from_slice(&expires.to_le_bytes()[..6]);
            LONG_DEADLINE_LEN
        }
    }
}

/// Reads the deadline at `b[at..]`; returns it and the position after it.
#[inline]
fn read_deadline(b: &[u8], at: usize) -> (u64, usize) {
    let mut short = [0u8; 8];
    short[..5].copy_from_slice(&b[at..at + 5]);
    let short = u64::from_le_bytes(short);
    if short <= SHORT_DEADLINE {
        (DEADLINE_BASE + short, at + 5)
    } else {
        let mut long = [0u8; 8];
        long[..6].copy_from_slice(&b[at + 5..at + LONG_DEADLINE_LEN]);
        (u64::from_le_bytes(long), at + LONG_DEADLINE_LEN)
    }
}

/// Bytes before the key: the two lengths and the deadline.
pub(crate) fn header_len(key_len: usize, value_len: usize, expires: u64) -> usize {
    varint_len(key_len * 2) + varint_len(value_len) + deadline_len(expires)
}

/// The size of an item holding `key` and `value` and deadline `expires`
/// (0 for none).
pub(crate) fn item_len(key_len: usize, value_len: usize, expires: u64) -> usize {
    header_len(key_len, value_len, expires) + key_len + value_len
}

/// An item's header: where its key starts, the key's length, the value's,
/// and the deadline (0 for none).
struct Header {
    key_at: usize,
    key_len: usize,
    value_len: usize,
    expires: u64,
}

#[inline]
fn header(b: &[u8]) -> Header {
    let (tagged, at) = read_varint(b, 0);
    let (value_len, at) = read_varint(b, at);
    let (expires, key_at) = if tagged & 1 != 0 { read_deadline(b, at) } else { (0, at) };
    Header { key_at, key_len: tagged >> 1, value_len, expires }
}

impl Header {
    fn len(&self) -> usize {
        self.key_at + self.key_len + self.value_len
    }
}

/// Bits of a [`Loc`] that hold the offset: a regular page is at most
/// 2 MiB, and a page of its own holds one item at offset 0.
const OFFSET_BITS: u32 = 21;
/// Bits of a [`Loc`] that hold the page number: 2^22 pages (8 TiB of
/// 2 MiB pages, or 4M values of over 512 KiB, each in a page of its own).
const PAGE_BITS: u32 = 22;
/// Bits of a [`Loc`], as the index's entry keeps it.
pub(crate) const LOC_BITS: u32 = PAGE_BITS + OFFSET_BITS;
/// Page numbers stop one short of the top, which marks [`Loc::NONE`].
const MAX_PAGES: usize = (1 << PAGE_BITS) - 1;

/// An item's place: page number (bits 21-42) and offset (bits 0-20); the
/// bits above are always zero, so the index keeps it in 43 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc(u64);

impl Loc {
    /// No item (a free slot in the index).
    pub(crate) const NONE: Loc = Loc((1 << (PAGE_BITS + OFFSET_BITS)) - 1);

    fn new(page: u32, offset: usize) -> Loc {
        debug_assert!((page as usize) < MAX_PAGES && offset < 1 << OFFSET_BITS);
        Loc((u64::from(page) << OFFSET_BITS) | offset as u64)
    }

    /// The place as the 43-bit number the index stores.
    pub(crate) fn to_bits(self) -> u64 {
        self.0
    }

    pub(crate) fn from_bits(bits: u64) -> Loc {
        debug_assert!(bits < 1 << (PAGE_BITS + OFFSET_BITS));
        Loc(bits)
    }

    fn page(self) -> usize {
        (self.0 >> OFFSET_BITS) as usize
    }

    fn offset(self) -> usize {
        (self.0 & ((1 << OFFSET_BITS) - 1)) as usize
    }
}

struct Page {
    /// `None` for a page number not in use.
    buf: Option<MmapMut>,
    /// Bytes written (the next item goes here).
    used: usize,
    /// Bytes of items still referred to.
    live: usize,
}

pub(crate) struct Arena {
    /// Bytes in a regular page; items above a quarter of it get their own.
    page_bytes: usize,
    pages: Vec<Page>,
    /// Page numbers not in use, for reuse.
    free_ids: Vec<u32>,
    /// The page new items go into.
    active: Option<u32>,
    /// One dropped regular page, kept for the next one (a cache cycling
    /// around a page boundary would otherwise map and unmap). Its old bytes
    /// are never read: nothing reads a page past what was written since.
    spare: Option<MmapMut>,
    /// Pages mapped and faulted in by another thread ([`fault_in_pages`]),
    /// taken before mapping one here.
    feed: Option<Receiver<MmapMut>>,
    used: usize,
    live: usize,
    held: usize,
    /// Bytes of new items ever written (wrapping): what reclaim keeps pace with.
    written: usize,
}

/// A fresh page of `len` bytes (zeroed by the kernel as it is touched).
fn map_page(len: usize) -> MmapMut {
    MmapMut::map_anon(len).unwrap_or_else(|e| panic!("mapping a {len}-byte arena page: {e}"))
}

/// Maps `count` pages of `page_bytes` and faults each in before sending it
/// to the arena that holds the other end (see [`Arena::feed`]); stops early
/// when that end is dropped or a page cannot be mapped (the arena then maps
/// its own, and reports a failure itself). Runs on a thread of its own.
///
/// Replay writes every page it opens from start to end at once, so each of
/// its 512 small page faults (zeroing, the cgroup's charge, the page
/// tables) is on the applying thread's path, a fifth of its time; here
/// they run beside it, on another core.
pub(crate) fn fault_in_pages(page_bytes: usize, count: usize, pages: SyncSender<MmapMut>) {
    for _ in 0..count {
        let Ok(mut map) = MmapMut::map_anon(page_bytes) else { return };
        if map.advise(memmap2::Advice::PopulateWrite).is_err() {
            // Kernels before 5.14: touch a byte of every small page.
            map.iter_mut().step_by(4096).for_each(|b| *b = 0);
        }
        if pages.send(map).is_err() {
            return;
        }
    }
}

fn buf(p: &Page) -> &[u8] {
    p.buf.as_deref().expect("a page in use")
}

impl Arena {
    pub(crate) fn new(page_bytes: usize) -> Arena {
        Arena {
            page_bytes,
            pages: Vec::new(),
            free_ids: Vec::new(),
            active: None,
            spare: None,
            feed: None,
            used: 0,
            live: 0,
            held: 0,
            written: 0,
        }
    }

    pub(crate) fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Takes new regular pages from `pages` while it has one ready (and
    /// maps them here when not); `None` stops, dropping the receiver.
    pub(crate) fn feed(&mut self, pages: Option<Receiver<MmapMut>>) {
        self.feed = pages;
    }

    /// Bytes of items still referred to.
    pub(crate) fn live_bytes(&self) -> usize {
        self.live
    }

    /// Bytes written into pages in use, live or dead: what the process has
    /// touched (and so holds) for items.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn used_bytes(&self) -> usize {
        self.used
    }

    /// Bytes of pages in use (what `used_bytes` can grow to without a new page).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }

    /// Bytes of new items ever written (wrapping).
    pub(crate) fn written(&self) -> usize {
        self.written
    }

    /// Writes a new item with deadline `expires` (0 for none); returns its
    /// place. It counts as live.
    pub(crate) fn alloc(&mut self, key: &[u8], value: &[u8], expires: u64) -> Loc {
        let expires = expires.min(MAX_DEADLINE);
        let len = item_len(key.len(), value.len(), expires);
        let (page, offset) = self.room(len);
        let p = &mut self.pages[page as usize];
        let b = &mut p.buf.as_deref_mut().expect("a page in use")[offset..offset + len];
        let at = write_varint(b, key.len() * 2 + usize::from(expires != 0));
        let at = at + write_varint(&mut b[at..], value.len());
        let at = at + write_deadline(&mut b[at..], expires);
        b[at..at + key.len()].copy_from_slice(key);
        b[at + key.len()..].copy_from_slice(value);
        p.used += len;
        p.live += len;
        self.used += len;
        self.live += len;
        self.written = self.written.wrapping_add(len);
        Loc::new(page, offset)
    }

    /// Copies the (live) item at `from` into the active page and marks the
    /// old copy dead; returns the new place. `from` must not be in the
    /// active page (reclaim moves items out of sealed pages only).
    pub(crate) fn relocate(&mut self, from: Loc) -> Loc {
        let len = self.len(from);
        let (page, offset) = self.room(len);
        debug_assert_ne!(page as usize, from.page(), "an item moves to another page");
        let [src, dst] = self.pages.get_disjoint_mut([from.page(), page as usize]).expect("two pages in use");
        let (dbuf, sbuf) = (dst.buf.as_deref_mut().expect("a page in use"), buf(src));
        dbuf[offset..offset + len].copy_from_slice(&sbuf[from.offset()..from.offset() + len]);
        dst.used += len;
        dst.live += len;
        src.live -= len;
        self.used += len;
        Loc::new(page, offset)
    }

    /// Finds `len` bytes: in the active page, a new one, or a page of its own.
    fn room(&mut self, len: usize) -> (u32, usize) {
        if len > self.page_bytes / 4 {
            let page = self.new_page(map_page(len));
            return (page, 0);
        }
        if let Some(a) = self.active {
            let p = &self.pages[a as usize];
            if buf(p).len() - p.used >= len {
                return (a, p.used);
            }
        }
        let map = self
            .spare
            .take()
            .or_else(|| self.feed.as_ref().and_then(|f| f.try_recv().ok()))
            .unwrap_or_else(|| map_page(self.page_bytes));
        let page = self.new_page(map);
        self.active = Some(page);
        (page, 0)
    }

    fn new_page(&mut self, map: MmapMut) -> u32 {
        self.held += map.len();
        let page = Page { buf: Some(map), used: 0, live: 0 };
        match self.free_ids.pop() {
            Some(id) => {
                self.pages[id as usize] = page;
                id
            }
            None => {
                // 2^22 pages is 8 TiB of regular pages, or as many values
                // large enough for a page of their own (over 512 KiB: 2 TiB).
                assert!(self.pages.len() < MAX_PAGES, "the arena holds at most {MAX_PAGES} pages");
                self.pages.push(page);
                (self.pages.len() - 1) as u32
            }
        }
    }

    /// The item at `loc`: its key, value and deadline (0 for none).
    pub(crate) fn item(&self, loc: Loc) -> (&[u8], &[u8], u64) {
        let b = &buf(&self.pages[loc.page()])[loc.offset()..];
        let h = header(b);
        let value_at = h.key_at + h.key_len;
        (&b[h.key_at..value_at], &b[value_at..value_at + h.value_len], h.expires)
    }

    pub(crate) fn key(&self, loc: Loc) -> &[u8] {
        let b = &buf(&self.pages[loc.page()])[loc.offset()..];
        let h = header(b);
        &b[h.key_at..h.key_at + h.key_len]
    }

    /// The item's deadline (0 for none).
    pub(crate) fn expires(&self, loc: Loc) -> u64 {
        header(&buf(&self.pages[loc.page()])[loc.offset()..]).expires
    }

    /// Asks the CPU for the start of the item at `loc` (its lengths and
    /// deadline), for a caller about to read several items. Reads no memory
    /// itself.
    pub(crate) fn prefetch(&self, loc: Loc) {
        if let Some(b) = self.pages.get(loc.page()).and_then(|p| p.buf.as_deref()) {
            crate::table::prefetch(b.as_ptr().wrapping_add(loc.offset()));
        }
    }

    /// The item's size in the page, header included.
    pub(crate) fn len(&self, loc: Loc) -> usize {
        header(&buf(&self.pages[loc.page()])[loc.offset()..]).len()
    }

    /// The item is no longer referred to; its bytes stay readable until its
    /// page is reclaimed.
    pub(crate) fn release(&mut self, loc: Loc) {
        let len = self.len(loc);
        self.pages[loc.page()].live -= len;
        self.live -= len;
    }

    /// A released item is referred to again (an undone change).
    pub(crate) fn revive(&mut self, loc: Loc) {
        let len = self.len(loc);
        self.pages[loc.page()].live += len;
        self.live += len;
    }

    /// A page worth reclaiming, if dead bytes are over a sixteenth of those
    /// written and over half a page: the sealed page with the fewest live
    /// bytes (so freeing it moves the least). The active page is never one.
    pub(crate) fn victim(&self) -> Option<u32> {
        let dead = self.used - self.live;
        if dead * 16 <= self.used || dead < self.page_bytes / 2 {
            return None;
        }
        let active = self.active.map(|a| a as usize);
        (0..self.pages.len())
            .filter(|&i| Some(i) != active && self.pages[i].buf.is_some())
            .min_by_key(|&i| self.pages[i].live)
            .map(|i| i as u32)
    }

    /// Where the next item of `page` after `offset` is, or `None` at its end.
    pub(crate) fn item_at(&self, page: u32, offset: usize) -> Option<Loc> {
        (offset < self.pages[page as usize].used).then(|| Loc::new(page, offset))
    }

    /// Drops a page every item of which has been moved or released.
    pub(crate) fn free_page(&mut self, page: u32) {
        let p = std::mem::replace(&mut self.pages[page as usize], Page { buf: None, used: 0, live: 0 });
        debug_assert_eq!(p.live, 0, "a reclaimed page holds nothing live");
        let map = p.buf.expect("a page in use");
        self.used -= p.used;
        self.held -= map.len();
        if self.active == Some(page) {
            self.active = None;
        }
        if map.len() == self.page_bytes && self.spare.is_none() {
            self.spare = Some(map);
        }
        self.free_ids.push(page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LARGE_ITEM: usize = PAGE_BYTES / 4;

    #[test]
    fn page_size_follows_the_cap() {
        assert_eq!(page_bytes_for(None), PAGE_BYTES);
        assert_eq!(page_bytes_for(Some(1 << 30)), PAGE_BYTES);
        assert_eq!(page_bytes_for(Some(8_000)), MIN_PAGE_BYTES);
        assert_eq!(page_bytes_for(Some(256 << 10)), MIN_PAGE_BYTES);
        assert_eq!(page_bytes_for(Some(10 << 20)), 128 << 10);
    }

    #[test]
    fn items_pack_and_read_back() {
        let mut a = Arena::new(PAGE_BYTES);
        let x = a.alloc(b"key", b"value", 0);
        let y = a.alloc(b"", b"", 0);
        assert_eq!(a.item(x), (&b"key"[..], &b"value"[..], 0));
        assert_eq!(a.item(y), (&b""[..], &b""[..], 0));
        assert_eq!(a.len(x), 2 + 8);
        assert_eq!(a.item_at(0, 2 + 8), Some(y));
        assert_eq!(a.live_bytes(), 2 * 2 + 8);
        a.release(x);
        assert_eq!(a.item(x), (&b"key"[..], &b"value"[..], 0), "released bytes stay readable");
        assert_eq!(a.live_bytes(), 2);
        a.revive(x);
        assert_eq!(a.live_bytes(), 2 * 2 + 8);
    }

    #[test]
    fn a_full_page_is_sealed_and_large_items_get_their_own() {
        let mut a = Arena::new(PAGE_BYTES);
        let v = vec![7u8; LARGE_ITEM - header_len(1, LARGE_ITEM, 0) - 1];
        let locs: Vec<Loc> = (0..5).map(|i| a.alloc(&[i], &v, 0)).collect();
        assert_eq!(locs[4].page(), 1, "the fifth quarter-page item opens a second page");
        let big = a.alloc(b"big", &vec![1u8; LARGE_ITEM], 0);
        assert_eq!((big.page(), big.offset()), (2, 0));
        assert_eq!(a.held_bytes(), 2 * PAGE_BYTES + item_len(3, LARGE_ITEM, 0));
        assert_eq!(a.alloc(b"x", b"y", 0).page(), 1, "small items still go to the active page");
    }

    #[test]
    fn pages_faulted_in_elsewhere_are_taken_first_and_the_pager_stops_with_its_arena() {
        const PAGE: usize = 64 << 10;
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        fault_in_pages(PAGE, 2, tx);
        // Mark the fed pages where no item in this test reaches.
        let (feed, fed) = std::sync::mpsc::sync_channel(2);
        for mut page in rx {
            page[PAGE - 1] = 0xab;
            feed.send(page).unwrap();
        }
        drop(feed);
        let mut a = Arena::new(PAGE);
        a.feed(Some(fed));
        let value = vec![1u8; PAGE / 8];
        let locs: Vec<Loc> = (0..30u8).map(|i| a.alloc(&[i], &value, 0)).collect();
        let pages = locs.last().unwrap().page() + 1;
        assert!(pages >= 4, "the items fill {pages} pages");
        let marked = |p: usize| buf(&a.pages[p])[PAGE - 1] == 0xab;
        assert!(marked(0) && marked(1), "the first two pages came from the feed");
        assert!((2..pages).all(|p| !marked(p)), "then the arena maps its own");
        for (i, &loc) in locs.iter().enumerate() {
            assert_eq!(a.item(loc), (&[i as u8][..], &value[..], 0));
        }

        // A pager whose arena is gone stops instead of waiting to send.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pager = std::thread::spawn(move || fault_in_pages(PAGE, usize::MAX, tx));
        drop(rx);
        pager.join().unwrap();
    }

    #[test]
    fn lengths_of_every_size_read_back() {
        let mut b = [0u8; 10];
        for n in [0, 1, 127, 128, 16_383, 16_384, 65_535, 2_097_151, 2_097_152, 1 << 30, (1 << 32) - 1] {
            let len = write_varint(&mut b, n);
            assert_eq!(len, varint_len(n), "{n}");
            assert_eq!(read_varint(&b, 0), (n, len), "{n}");
        }
        let mut a = Arena::new(PAGE_BYTES);
        let deadlines = [0, 1, DEADLINE_BASE - 1, DEADLINE_BASE, 1_800_000_000_000, DEADLINE_BASE + SHORT_DEADLINE];
        let deadlines = deadlines.into_iter().chain([DEADLINE_BASE + SHORT_DEADLINE + 1, MAX_DEADLINE]);
        for (i, expires) in deadlines.enumerate() {
            for (k, v) in [(0, 0), (63, 1), (64, 128), (127, 128), (128, 16_384), (65_535, 100), (3, 300_000)] {
                let (key, value) = (vec![i as u8; k], vec![2u8; v]);
                let loc = a.alloc(&key, &value, expires);
                assert_eq!(a.item(loc), (&key[..], &value[..], expires), "{k} {v} {expires}");
                assert_eq!(a.key(loc), &key[..]);
                assert_eq!(a.expires(loc), expires);
                assert_eq!(a.len(loc), item_len(k, v, expires));
            }
        }
        let capped = a.alloc(b"k", b"v", u64::MAX);
        assert_eq!(a.expires(capped), MAX_DEADLINE, "a later deadline is capped, not wrapped");
        assert_eq!(item_len(16, 100, 0), 118, "the entry of ARCHITECTURE.md's budget");
        assert_eq!(item_len(16, 100, 1_800_000_000_000), 123, "and with a deadline");
        assert_eq!(item_len(16, 100, DEADLINE_BASE - 1), 129, "the long form, before 2020");
    }

    #[test]
    fn reclaim_moves_live_items_and_frees_the_page() {
        let mut a = Arena::new(PAGE_BYTES);
        let v = vec![3u8; 1000];
        let mut locs: Vec<Loc> =
            (0..4000u16).map(|i| a.alloc(&i.to_le_bytes(), &v, u64::from(i % 3) * 1_800_000_000_000)).collect();
        // Release all but every tenth item of the first page.
        for (i, &l) in locs.iter().enumerate() {
            if l.page() == 0 && i % 10 != 0 {
                a.release(l);
            }
        }
        assert_eq!(a.victim(), Some(0));
        let mut off = 0;
        while let Some(l) = a.item_at(0, off) {
            off += a.len(l);
            if let Some(i) = locs.iter().position(|&x| x == l).filter(|i| i % 10 == 0) {
                locs[i] = a.relocate(l);
            }
        }
        a.free_page(0);
        assert_eq!(a.used_bytes(), a.live_bytes());
        for (i, &l) in locs.iter().enumerate().filter(|(i, l)| i % 10 == 0 || l.page() != 0) {
            assert_eq!(a.item(l), (&(i as u16).to_le_bytes()[..], &v[..], (i % 3) as u64 * 1_800_000_000_000));
        }
        assert!(a.spare.is_some(), "the page is kept for the next one");
    }
}
