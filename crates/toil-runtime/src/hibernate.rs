//! Hibernation: an idle stream box gives its instance back and keeps only
//! what makes it differ from a fresh one.
//!
//! ## Problem
//!
//! A resident box holds an instance for as long as its session lasts: a
//! slot of the pooling allocator with the linear-memory pages the guest
//! touched (the top of its shadow stack, its data, its first heap page),
//! its table, a fiber stack the store keeps for its next call, the store
//! and the instance. For a session that waits on its client most of the
//! time, that is most of what it costs the node (docs/bench.md has the
//! split). Yet what the guest *has* is small: a few hundred bytes of state
//! among pages that a fresh instance of the same module would fill the
//! same way.
//!
//! ## Design
//!
//! After `limits.hibernateAfterMs` without an event, the box takes a
//! [`Snapshot`] and drops its store; the slot, the fiber stack and the
//! instance go back to the stream tier's pool, which hands their pages
//! back to the kernel (see `engine`). The host state (the outbox, channel
//! subscriptions, the WASI context) is kept as it is. A snapshot is:
//!
//! - the memory's size;
//! - each 64-byte block of linear memory that differs from the module's
//!   initial [`Image`] (its active data segments over zeros), with a
//!   64-bit mask per 4 KiB page saying which blocks are stored;
//! - the value of every mutable global, read through exports the host adds
//!   to the module when it compiles it ([`Plan::prepare`]).
//!
//! The next event instantiates the module again (without `_initialize`:
//! its effects are in the memory), grows the memory to the size it had,
//! writes the blocks back and sets the globals, then runs. The guest
//! cannot tell: its memory, globals and host state are what they were.
//!
//! A module can hibernate only if a fresh instance differs from the old
//! one in nothing but memory and globals. [`Plan::of`] checks that once,
//! at load, and otherwise says why (its boxes then stay resident):
//!
//! - one linear memory (imports other than functions are refused anyway);
//! - no start function (it would run again at the wake);
//! - no instruction that changes a table or drops a segment (`table.set`,
//!   `table.grow`, `table.fill`, `table.copy`, `table.init`, `elem.drop`,
//!   `memory.init`, `data.drop`): a fresh instance has the original ones;
//! - mutable globals of number types only (a reference cannot move from
//!   one store to another);
//! - active data segments at constant offsets.
//!
//! Taking a snapshot reads the whole memory once per idle period, on the
//! session's worker: a box whose memory has grown past
//! [`MAX_MEMORY_BYTES`] (16 MiB, about 2 ms to read) stays resident.
//! Restoring writes only the stored blocks.
//!
//! Nothing here does I/O or touches wasmtime: the plan reads bytes, the
//! snapshot compares and writes slices, so both are tested on their own.

use std::collections::BTreeMap;

use wasmparser::{DataKind, ExternalKind, Operator, Parser, Payload, ValType};

/// The unit of a snapshot's mask: a page of the host's.
pub const PAGE: usize = 4096;
/// The unit a snapshot stores: a page has 64 of them, one mask bit each.
pub const BLOCK: usize = PAGE / 64;
/// The most image a plan holds (a Rust guest's is a few pages): a small
/// artifact with segments scattered over its memory must not make the
/// node hold a page per segment.
const MAX_IMAGE_PAGES: usize = 1024;
/// The largest memory a box hibernates with: taking a snapshot reads all
/// of it on the session's worker (about 2 ms at this size), so a larger
/// box stays resident.
pub const MAX_MEMORY_BYTES: usize = 16 << 20;
/// The prefix of the exports the host adds (see [`Plan::prepare`]).
const EXPORT_PREFIX: &str = "toil:hibernate:";

/// Why a module cannot hibernate.
pub type Refusal = String;

/// How a module's boxes hibernate: found once per artifact.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The module's initial linear memory.
    pub image: Image,
    /// Each mutable global's index and type (a number type).
    pub globals: Vec<(u32, ValType)>,
    /// The memory's export name, if the module exports it.
    memory_export: Option<String>,
}

impl Plan {
    /// Checks that `bytes` (a valid module) can hibernate, and reads its
    /// initial memory image and mutable globals.
    pub fn of(bytes: &[u8]) -> Result<Plan, Refusal> {
        let mut memories = 0;
        let mut initial_bytes = 0u64;
        let mut globals = Vec::new();
        let mut memory_export = None;
        let mut image = Image::default();
        let mut global_index = 0u32;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(|e| e.to_string())? {
                Payload::ImportSection(r) => {
                    for import in r.into_imports() {
                        let import = import.map_err(|e| e.to_string())?;
                        if !matches!(import.ty, wasmparser::TypeRef::Func(_)) {
                            return Err(format!("it imports {}.{}, which is not a function", import.module, import.name));
                        }
                    }
                }
                Payload::MemorySection(r) => {
                    for memory in r {
                        let memory = memory.map_err(|e| e.to_string())?;
                        memories += 1;
                        initial_bytes = memory.initial.saturating_mul(1u64 << memory.page_size_log2.unwrap_or(16));
                    }
                }
                Payload::GlobalSection(r) => {
                    for global in r {
                        let global = global.map_err(|e| e.to_string())?;
                        if global.ty.mutable {
                            let ty = global.ty.content_type;
                            if !matches!(ty, ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128) {
                                return Err(format!("its mutable global {global_index} holds a reference ({ty})"));
                            }
                            globals.push((global_index, ty));
                        }
                        global_index += 1;
                    }
                }
                Payload::ExportSection(r) => {
                    for export in r {
                        let export = export.map_err(|e| e.to_string())?;
                        if export.name.starts_with(EXPORT_PREFIX) {
                            return Err(format!("it exports {:?}, a name the host reserves", export.name));
                        }
                        if export.kind == ExternalKind::Memory && memory_export.is_none() {
                            memory_export = Some(export.name.to_string());
                        }
                    }
                }
                Payload::StartSection { .. } => return Err("it has a start function, which would run again".into()),
                Payload::DataSection(r) => {
                    for segment in r {
                        let segment = segment.map_err(|e| e.to_string())?;
                        if let DataKind::Active { offset_expr, .. } = segment.kind {
                            let mut expr = offset_expr.get_operators_reader();
                            let (first, second) = (expr.read().map_err(|e| e.to_string())?, expr.read().map_err(|e| e.to_string())?);
                            let offset = match (first, second) {
                                (Operator::I32Const { value }, Operator::End) => value as u32 as u64,
                                (Operator::I64Const { value }, Operator::End) => value as u64,
                                _ => return Err("a data segment's offset is an expression, not a constant".into()),
                            };
                            // Such a module fails to instantiate anyway.
                            if offset.checked_add(segment.data.len() as u64).is_none_or(|end| end > initial_bytes) {
                                return Err("a data segment ends past the memory's initial size".into());
                            }
                            image.write(offset, segment.data);
                            if image.pages.len() > MAX_IMAGE_PAGES {
                                return Err(format!("its data segments cover more than {MAX_IMAGE_PAGES} pages"));
                            }
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
                    while !ops.eof() {
                        let what = match ops.read().map_err(|e| e.to_string())? {
                            Operator::TableSet { .. } => "table.set",
                            Operator::TableGrow { .. } => "table.grow",
                            Operator::TableFill { .. } => "table.fill",
                            Operator::TableCopy { .. } => "table.copy",
                            Operator::TableInit { .. } => "table.init",
                            Operator::ElemDrop { .. } => "elem.drop",
                            Operator::MemoryInit { .. } => "memory.init",
                            Operator::DataDrop { .. } => "data.drop",
                            _ => continue,
                        };
                        return Err(format!("its code uses {what}, whose effect a fresh instance would not have"));
                    }
                }
                _ => {}
            }
        }
        if memories != 1 {
            return Err(format!("it has {memories} linear memories, not one"));
        }
        Ok(Plan { image, globals, memory_export })
    }

    /// The module to compile: `bytes` with an export for each mutable
    /// global (and for the memory, if it has none), so the host can read
    /// and set them. `bytes` must be the module [`Plan::of`] accepted.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
        let mut added = Vec::new();
        for &(index, _) in &self.globals {
            added.push((Self::global_export(index), 0x03u8, index));
        }
        if self.memory_export.is_none() {
            added.push((Self::MEMORY_EXPORT.to_string(), 0x02, 0));
        }
        if added.is_empty() {
            return Ok(bytes.to_vec());
        }
        let mut out = bytes[..8].to_vec();
        let mut at = 8;
        let mut found = false;
        while at < bytes.len() {
            let id = bytes[at];
            let (size, len) = read_u32(&bytes[at + 1..]).ok_or("a section's size is malformed")?;
            let content = &bytes[at + 1 + len..at + 1 + len + size as usize];
            if id == 7 {
                found = true;
                let (count, count_len) = read_u32(content).ok_or("the export count is malformed")?;
                let mut section = Vec::new();
                write_u32(&mut section, count + added.len() as u32);
                section.extend_from_slice(&content[count_len..]);
                for (name, kind, index) in &added {
                    write_u32(&mut section, name.len() as u32);
                    section.extend_from_slice(name.as_bytes());
                    section.push(*kind);
                    write_u32(&mut section, *index);
                }
                out.push(7);
                write_u32(&mut out, section.len() as u32);
                out.extend_from_slice(&section);
            } else {
                out.extend_from_slice(&bytes[at..at + 1 + len + size as usize]);
            }
            at += 1 + len + size as usize;
        }
        if !found {
            return Err("it has no export section".into());
        }
        Ok(out)
    }

    /// The export through which the host reads and sets global `index`.
    pub fn global_export(index: u32) -> String {
        format!("{EXPORT_PREFIX}global:{index}")
    }

    const MEMORY_EXPORT: &'static str = "toil:hibernate:memory";

    /// The name under which the prepared module exports its memory.
    pub fn memory_export(&self) -> &str {
        self.memory_export.as_deref().unwrap_or(Self::MEMORY_EXPORT)
    }
}

/// A module's linear memory as instantiation leaves it: its active data
/// segments, in order, over zeros. Only pages a segment touches are held.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pages: BTreeMap<u64, Box<[u8; PAGE]>>,
}

impl Image {
    fn write(&mut self, offset: u64, mut data: &[u8]) {
        let mut at = offset;
        while !data.is_empty() {
            let (page, within) = (at / PAGE as u64, (at % PAGE as u64) as usize);
            let n = data.len().min(PAGE - within);
            let target = self.pages.entry(page).or_insert_with(|| Box::new([0; PAGE]));
            target[within..within + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            at += n as u64;
        }
    }

    fn page(&self, index: u64) -> Option<&[u8; PAGE]> {
        self.pages.get(&index).map(|p| &**p)
    }
}

/// What a hibernating box keeps of its instance (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<G> {
    /// The linear memory's size in bytes.
    pub memory_bytes: usize,
    /// The mutable globals' values, in [`Plan::globals`]' order.
    pub globals: Box<[G]>,
    /// Pages with stored blocks: (page index, which of its blocks).
    pages: Box<[(u32, u64)]>,
    /// The stored blocks, in page then block order.
    blocks: Box<[u8]>,
}

impl<G> Snapshot<G> {
    /// The blocks of `memory` that differ from `image`.
    pub fn take(memory: &[u8], image: &Image, globals: Box<[G]>) -> Snapshot<G> {
        let (mut pages, mut blocks) = (Vec::new(), Vec::new());
        for (index, page) in memory.chunks_exact(PAGE).enumerate() {
            let initial = image.page(index as u64);
            let same = match initial {
                Some(initial) => page == initial.as_slice(),
                None => is_zero(page),
            };
            if same {
                continue;
            }
            let mut mask = 0u64;
            for (i, block) in page.chunks_exact(BLOCK).enumerate() {
                let differs = match initial {
                    Some(initial) => block != &initial[i * BLOCK..(i + 1) * BLOCK],
                    None => !is_zero(block),
                };
                if differs {
                    mask |= 1 << i;
                    blocks.extend_from_slice(block);
                }
            }
            pages.push((index as u32, mask));
        }
        Snapshot { memory_bytes: memory.len(), globals, pages: pages.into(), blocks: blocks.into() }
    }

    /// Writes the stored blocks into `memory`: a fresh instance's memory,
    /// already grown to [`Snapshot::memory_bytes`].
    pub fn restore(&self, memory: &mut [u8]) {
        let mut blocks = self.blocks.chunks_exact(BLOCK);
        for &(page, mask) in self.pages.iter() {
            let base = page as usize * PAGE;
            for i in (0..64).filter(|i| mask & (1 << i) != 0) {
                let block = blocks.next().expect("a block per mask bit");
                memory[base + i * BLOCK..base + (i + 1) * BLOCK].copy_from_slice(block);
            }
        }
    }

    /// The bytes this snapshot holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.len() + self.pages.len() * std::mem::size_of::<(u32, u64)>() + self.globals.len() * std::mem::size_of::<G>()
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(16);
    let tail = words.remainder();
    words.into_iter().all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0) && tail.iter().all(|b| *b == 0)
}

fn read_u32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module shaped like a Rust guest: a stack pointer global, data
    /// that straddles a page boundary, the memory exported.
    const GUEST: &str = r#"(module
        (memory (export "memory") 2)
        (global $sp (mut i32) (i32.const 65536))
        (global $limit i32 (i32.const 7))
        (global $count (mut i64) (i64.const 0))
        (data (i32.const 65530) "hello world")
        (data (i32.const 70000) "\01\02")
        (func (export "stream_dispatch") (param i32 i32) (result i32) i32.const 0))"#;

    fn plan(wat: &str) -> Result<Plan, Refusal> {
        Plan::of(&wat::parse_str(wat).unwrap())
    }

    #[test]
    fn the_plan_reads_the_image_and_the_mutable_globals() {
        let plan = plan(GUEST).unwrap();
        assert_eq!(plan.globals, [(0, ValType::I32), (2, ValType::I64)]);
        assert_eq!(plan.memory_export(), "memory");
        let first = plan.image.page(65530 / PAGE as u64).unwrap();
        assert_eq!(&first[65530 % PAGE..], b"hello ");
        assert_eq!(&plan.image.page(65536 / PAGE as u64).unwrap()[..5], b"world");
        assert_eq!(&plan.image.page(70000 / PAGE as u64).unwrap()[70000 % PAGE..][..2], [1, 2]);
        assert!(plan.image.page(0).is_none(), "pages no segment touches are zeros, not held");
    }

    #[test]
    fn prepare_exports_each_mutable_global_and_keeps_the_rest() {
        let bytes = wat::parse_str(GUEST).unwrap();
        let plan = Plan::of(&bytes).unwrap();
        let prepared = plan.prepare(&bytes).unwrap();
        wasmparser::Validator::new().validate_all(&prepared).expect("the prepared module is valid");
        let mut exports = Vec::new();
        for payload in Parser::new(0).parse_all(&prepared) {
            if let Payload::ExportSection(r) = payload.unwrap() {
                exports.extend(r.into_iter().map(|e| e.unwrap()).map(|e| (e.name.to_string(), e.kind, e.index)));
            }
        }
        assert_eq!(
            exports,
            [
                ("memory".to_string(), ExternalKind::Memory, 0),
                ("stream_dispatch".to_string(), ExternalKind::Func, 0),
                (Plan::global_export(0), ExternalKind::Global, 0),
                (Plan::global_export(2), ExternalKind::Global, 2),
            ]
        );
        // A module whose memory is not exported gets an export for it.
        let bytes = wat::parse_str(r#"(module (memory 1) (func (export "f")))"#).unwrap();
        let plan = Plan::of(&bytes).unwrap();
        let prepared = plan.prepare(&bytes).unwrap();
        wasmparser::Validator::new().validate_all(&prepared).unwrap();
        assert_eq!(plan.memory_export(), "toil:hibernate:memory");
        assert!(prepared.windows(plan.memory_export().len()).any(|w| w == plan.memory_export().as_bytes()));
    }

    #[test]
    fn modules_a_fresh_instance_would_not_match_are_refused_with_the_reason() {
        for (wat, reason) in [
            (r#"(module (memory 1) (func $s) (start $s) (export "m" (memory 0)))"#, "start function"),
            (r#"(module (memory 1) (table 1 funcref) (func (export "f") (table.set 0 (i32.const 0) (ref.null func))))"#, "table.set"),
            (r#"(module (memory 1) (table 1 funcref) (func (export "f") (drop (table.grow 0 (ref.null func) (i32.const 1)))))"#, "table.grow"),
            (r#"(module (memory 1) (data "x") (func (export "f") (data.drop 0)))"#, "data.drop"),
            (r#"(module (memory 1) (data "x") (func (export "f") (memory.init 0 (i32.const 0) (i32.const 0) (i32.const 1))))"#, "memory.init"),
            (r#"(module (memory 1) (global (mut funcref) (ref.null func)) (func (export "f")))"#, "reference"),
            (r#"(module (func (export "f")))"#, "0 linear memories"),
            (r#"(module (memory 1) (memory 1) (func (export "f")))"#, "2 linear memories"),
            (r#"(module (memory (export "toil:hibernate:global:0") 1))"#, "reserves"),
            (r#"(module (memory 1) (data (i32.add (i32.const 8) (i32.const 8)) "x"))"#, "not a constant"),
            (r#"(module (memory 1) (data (i32.const 65535) "xy"))"#, "past the memory's initial size"),
            (r#"(module (memory 1) (data (i32.const -1) "x"))"#, "past the memory's initial size"),
        ] {
            let why = plan(wat).expect_err(wat);
            assert!(why.contains(reason), "{wat}: {why:?} does not say {reason:?}");
        }
    }

    #[test]
    fn an_image_scattered_over_memory_is_refused_before_it_is_held() {
        let segments: String = (0..=MAX_IMAGE_PAGES).map(|page| format!("(data (i32.const {}) \"x\")", page * PAGE)).collect();
        let why = plan(&format!("(module (memory 100) {segments})")).unwrap_err();
        assert!(why.contains("more than 1024 pages"), "{why}");
    }

    /// Memory as a guest leaves it: the image plus writes.
    fn memory_after(image: &Image, pages: usize, writes: &[(usize, &[u8])]) -> Vec<u8> {
        let mut memory = fresh(image, pages);
        for (at, bytes) in writes {
            memory[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        memory
    }

    /// What a fresh instance's memory of `pages` host pages holds.
    fn fresh(image: &Image, pages: usize) -> Vec<u8> {
        let mut memory = vec![0; pages * PAGE];
        for (index, page) in &image.pages {
            memory[*index as usize * PAGE..][..PAGE].copy_from_slice(&page[..]);
        }
        memory
    }

    #[test]
    fn a_snapshot_holds_only_the_blocks_that_differ_and_restores_them() {
        let plan = plan(GUEST).unwrap();
        let writes: &[(usize, &[u8])] = &[
            (10, b"stack"),                     // a zero page
            (65530, b"HELLO"),                  // over the image
            (PAGE * 20 - 2, b"straddles"),      // two blocks of two pages
            (PAGE * 31 + BLOCK * 63, &[9; 64]), // the last block of memory
        ];
        let memory = memory_after(&plan.image, 32, writes);
        let snapshot = Snapshot::take(&memory, &plan.image, Box::new([7i64]));
        assert_eq!(snapshot.pages.len(), 5);
        assert_eq!(snapshot.blocks.len(), 5 * BLOCK);
        assert_eq!(snapshot.memory_bytes, 32 * PAGE);
        let mut restored = fresh(&plan.image, 32);
        snapshot.restore(&mut restored);
        assert!(restored == memory, "the restored memory is the memory the snapshot was taken of");

        // A page set back to what the image has needs nothing.
        let untouched = Snapshot::take(&fresh(&plan.image, 32), &plan.image, Box::new([0i64]));
        assert_eq!((untouched.pages.len(), untouched.blocks.len()), (0, 0));
        // Zeroing the image's data is a difference too.
        let zeroed = memory_after(&plan.image, 32, &[(65530, &[0; 6])]);
        let snapshot = Snapshot::take(&zeroed, &plan.image, Box::new([0i64]));
        let mut restored = fresh(&plan.image, 32);
        snapshot.restore(&mut restored);
        assert!(restored == zeroed);
    }
}
