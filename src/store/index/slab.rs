//! A sharded table of fixed-size entries, the index's storage.
//!
//! Each of the [`SHARDS`] shards is a `Vec` of entries (a freed entry is
//! marked and reused) and a hash table of positions in it, behind a
//! `RwLock`: a lookup is one hash and one shard read lock, as with
//! dashmap, but an entry costs its own bytes plus about 8 for the table,
//! with no allocation of its own. An entry's [`Slot`] (shard and position)
//! never changes while it lives, so entries can point at each other.
//!
//! Which shard holds a key is a fixed function of it ([`Entry::spread`]),
//! so a snapshot stores each shard's entries as they are and a load only
//! rebuilds the hash tables. Those are hashed with a per-process random
//! key (foldhash), so chosen keys cannot pile up in one chain.

use std::hash::{BuildHasher, Hash};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

pub const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
const POSITION_BITS: u32 = 32 - SHARD_BITS;

/// Where an entry lives: shard in the top bits, position below.
pub type Slot = u32;
/// No entry (the end of a list). No slot reaches it or the one below it,
/// which the index uses as a marker of its own.
pub const NONE: Slot = Slot::MAX;

pub trait Entry: Copy + Send + Sync {
    type Key: Copy + Eq + Hash;
    /// Bytes of an entry in a snapshot.
    const SIZE: usize;
    /// What stands in a freed position.
    const FREE: Self;
    fn key(&self) -> Self::Key;
    fn is_free(&self) -> bool;
    /// A fixed hash of the key whose top bits pick the shard.
    fn spread(key: &Self::Key) -> u64;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
}

/// A shard has no room left (2^26 - 2 entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an index shard is full")]
pub struct Full;

#[derive(Debug)]
struct Shard<E> {
    table: HashTable<u32>,
    entries: Vec<E>,
    free: Vec<u32>,
}

#[derive(Debug)]
pub struct Slab<E> {
    shards: Box<[RwLock<Shard<E>>]>,
    hasher: foldhash::fast::RandomState,
    len: AtomicUsize,
}

impl<E> Default for Slab<E> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        table: HashTable::new(),
                        entries: Vec::new(),
                        free: Vec::new(),
                    })
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            len: AtomicUsize::new(0),
        }
    }
}

fn shard_of_slot(slot: Slot) -> usize {
    (slot >> POSITION_BITS) as usize
}

fn position(slot: Slot) -> usize {
    (slot & ((1 << POSITION_BITS) - 1)) as usize
}

/// Puts `entry` in a freed position or at the end; its position.
fn place<E>(entries: &mut Vec<E>, free: &mut Vec<u32>, entry: E) -> Result<u32, Full> {
    match free.pop() {
        Some(at) => {
            entries[at as usize] = entry;
            Ok(at)
        }
        None if entries.len() < (1 << POSITION_BITS) - 2 => {
            entries.push(entry);
            Ok((entries.len() - 1) as u32)
        }
        None => Err(Full),
    }
}

impl<E: Entry> Slab<E> {
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn shard_of(key: &E::Key) -> usize {
        (E::spread(key) >> (64 - SHARD_BITS)) as usize
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard<E>> {
        // A panic while a shard was locked leaves plain data: keep going.
        self.shards[shard]
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard<E>> {
        self.shards[shard]
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entry of `key` and its slot, handed to `then` while its shard is
    /// still read-locked (so nothing it points at can be freed meanwhile).
    pub fn with<R>(&self, key: &E::Key, then: impl FnOnce(Slot, &E) -> R) -> Option<R> {
        let index = Self::shard_of(key);
        let shard = self.read(index);
        let hash = self.hasher.hash_one(key);
        let &at = shard
            .table
            .find(hash, |&at| shard.entries[at as usize].key() == *key)?;
        let slot = ((index as u32) << POSITION_BITS) | at;
        Some(then(slot, &shard.entries[at as usize]))
    }

    pub fn get(&self, key: &E::Key) -> Option<(Slot, E)> {
        self.with(key, |slot, entry| (slot, *entry))
    }

    /// The entry at a live slot.
    pub fn at(&self, slot: Slot) -> E {
        self.read(shard_of_slot(slot)).entries[position(slot)]
    }

    /// The slot of `entry`'s key, and whether `entry` was added there
    /// because the key had none: one lock and one probe for both (a
    /// replay's every creation asks this twice).
    pub fn get_or_insert(&self, entry: E) -> Result<(Slot, bool), Full> {
        let index = Self::shard_of(&entry.key());
        let mut shard = self.write(index);
        let Shard {
            table,
            entries,
            free,
        } = &mut *shard;
        let (hasher, key) = (&self.hasher, entry.key());
        let found = table.entry(
            hasher.hash_one(key),
            |&at| entries[at as usize].key() == key,
            |&at| hasher.hash_one(entries[at as usize].key()),
        );
        let (at, added) = match found {
            hashbrown::hash_table::Entry::Occupied(taken) => (*taken.get(), false),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let at = place(entries, free, entry)?;
                vacant.insert(at);
                self.len.fetch_add(1, Ordering::Relaxed);
                (at, true)
            }
        };
        Ok((((index as u32) << POSITION_BITS) | at, added))
    }

    /// Changes the entry at a live slot (not its key).
    pub fn update(&self, slot: Slot, change: impl FnOnce(&mut E)) {
        let mut shard = self.write(shard_of_slot(slot));
        change(&mut shard.entries[position(slot)]);
    }

    pub fn remove(&self, key: &E::Key) -> Option<E> {
        let mut shard = self.write(Self::shard_of(key));
        let Shard {
            table,
            entries,
            free,
        } = &mut *shard;
        let hash = self.hasher.hash_one(key);
        let found = table
            .find_entry(hash, |&at| entries[at as usize].key() == *key)
            .ok()?;
        let (at, _) = found.remove();
        let entry = std::mem::replace(&mut entries[at as usize], E::FREE);
        free.push(at);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(entry)
    }

    /// Writes every shard's entries as they are: per shard, a `u32` count
    /// then that many entries of [`Entry::SIZE`] bytes. Nothing may change
    /// meanwhile.
    pub fn dump(&self, out: &mut impl Write) -> io::Result<()> {
        let mut buffer = Vec::new();
        for index in 0..SHARDS {
            let shard = self.read(index);
            buffer.clear();
            buffer.resize(shard.entries.len() * E::SIZE, 0);
            for (entry, bytes) in shard.entries.iter().zip(buffer.chunks_exact_mut(E::SIZE)) {
                entry.encode(bytes);
            }
            out.write_all(&(shard.entries.len() as u32).to_le_bytes())?;
            out.write_all(&buffer)?;
        }
        Ok(())
    }

    /// The slab [`Slab::dump`] wrote. The hash tables are rebuilt on two
    /// threads once every shard is read.
    pub fn undump(input: &mut impl Read) -> io::Result<Self> {
        const CHUNK: usize = 1 << 14;
        let mut buffer = Vec::new();
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let mut count = [0; 4];
            input.read_exact(&mut count)?;
            let count = u32::from_le_bytes(count) as usize;
            if count > 1 << POSITION_BITS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "shard too large",
                ));
            }
            // Read in chunks through one buffer: no copy of a whole shard
            // in memory, and a damaged count cannot reserve much more
            // than the file holds.
            let mut entries = Vec::with_capacity(count.min(1 << 22));
            let mut left = count;
            while left > 0 {
                let chunk = left.min(CHUNK);
                buffer.resize(chunk * E::SIZE, 0);
                input.read_exact(&mut buffer)?;
                entries.extend(buffer.chunks_exact(E::SIZE).map(E::decode));
                left -= chunk;
            }
            shards.push(entries);
        }
        let slab = Self::default();
        let len = AtomicUsize::new(0);
        let build = |range: std::ops::Range<usize>, shards: Vec<Vec<E>>| {
            for (index, entries) in range.zip(shards) {
                let free: Vec<u32> = (0..entries.len() as u32)
                    .filter(|&at| entries[at as usize].is_free())
                    .collect();
                let live = entries.len() - free.len();
                let mut table = HashTable::with_capacity(live);
                for (at, entry) in entries.iter().enumerate() {
                    if !entry.is_free() {
                        table.insert_unique(slab.hasher.hash_one(entry.key()), at as u32, |&at| {
                            slab.hasher.hash_one(entries[at as usize].key())
                        });
                    }
                }
                len.fetch_add(live, Ordering::Relaxed);
                *slab.write(index) = Shard {
                    table,
                    entries,
                    free,
                };
            }
        };
        let second = shards.split_off(SHARDS / 2);
        std::thread::scope(|scope| {
            scope.spawn(|| build(SHARDS / 2..SHARDS, second));
            build(0..SHARDS / 2, shards);
        });
        slab.len.store(len.into_inner(), Ordering::Relaxed);
        Ok(slab)
    }

    /// Calls `check` on every live entry until it fails.
    pub fn try_each<X>(&self, mut check: impl FnMut(&E) -> Result<(), X>) -> Result<(), X> {
        for index in 0..SHARDS {
            let shard = self.read(index);
            shard
                .entries
                .iter()
                .filter(|entry| !entry.is_free())
                .try_for_each(&mut check)?;
        }
        Ok(())
    }

    /// Whether `slot` could name an entry (its shard has that position).
    pub fn holds(&self, slot: Slot) -> bool {
        slot == NONE || position(slot) < self.read(shard_of_slot(slot)).entries.len()
    }
}
