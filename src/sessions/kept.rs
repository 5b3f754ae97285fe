//! The session bindings on disk, so that a restart does not forget them
//! (until the RADIUS feed sends them again, every first scan of a bound
//! subscriber would be refused): a RocksDB of its own in
//! `data_dir/sessions`, beside the event log and not part of it (bindings
//! are the operator's live state, not history: no event, no replay, no
//! backup).
//!
//! One entry per network, mirroring the table: after every change of a
//! network in memory, [`Kept::mirror`] writes what the table holds for it
//! then (or deletes it), under that network's lock, so the last write is
//! always the table's last state, whatever the order of concurrent
//! changes. Written without an fsync: a killed process loses nothing (the
//! write is in the page cache), a machine crash may lose the last changes,
//! which the feed repeats.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use rocksdb::{DB, IteratorMode, Options, WriteOptions};

use crate::core::{BindingSource, Bound, Sessions};
use crate::wire::SubscriberRef;

/// Where the bindings are kept, under the data dir.
pub const DIR: &str = "sessions";

/// Locks per network (by hash): a change and its write happen together.
const STRIPES: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error("session bindings at {path}: {source}")]
pub struct KeptError {
    path: String,
    source: rocksdb::Error,
}

pub struct Kept {
    db: DB,
    stripes: [Mutex<()>; STRIPES],
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").finish_non_exhaustive()
    }
}

impl Kept {
    pub fn open(path: &Path) -> Result<Self, KeptError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        // A small table: a small memtable, few files.
        options.set_write_buffer_size(8 << 20);
        options.set_max_open_files(64);
        let db = DB::open(&options, path).map_err(|source| KeptError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            stripes: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    /// Every binding on disk that decodes (an entry that does not is
    /// deleted and logged: the feed repeats it).
    pub fn load(&self) -> Vec<Bound> {
        let mut bound = Vec::new();
        for (key, value) in self.db.iterator(IteratorMode::Start).flatten() {
            match decode(&key, &value) {
                Some(binding) => bound.push(binding),
                None => {
                    tracing::warn!("a kept session binding does not decode; dropped");
                    let _ = self.db.delete(&key);
                }
            }
        }
        bound
    }

    /// Runs `change` (of `network` in `table`), then writes what the table
    /// holds for `network`, both under `network`'s lock.
    pub fn mirror<T>(&self, table: &Sessions, network: IpNet, change: impl FnOnce() -> T) -> T {
        let network = crate::core::canonical_net(network);
        let stripe = &self.stripes[stripe_of(network)];
        let _held = stripe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let done = change();
        let key = network_key(network);
        let written = match table.get(network) {
            Some(binding) => self.db.put_opt(key, encode(&binding), &no_sync()),
            None => self.db.delete_opt(key, &no_sync()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, %network, "session binding not kept on disk");
        }
        done
    }

    /// Leaves no copy of removed bindings in the files (an erasure): the
    /// memtable flushed (the write-ahead log that held them is then
    /// deleted) and every table compacted (older versions dropped).
    pub fn purge(&self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "kept session bindings not flushed");
        }
        self.db.compact_range::<&[u8], &[u8]>(None, None);
    }
}

fn no_sync() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(false);
    options
}

fn stripe_of(network: IpNet) -> usize {
    use std::hash::BuildHasher;
    let hash = foldhash::fast::FixedState::with_seed(0).hash_one(network);
    (hash as usize) % STRIPES
}

/// A network as a key: its family (4 or 6), its prefix length, its address.
pub(super) fn network_key(network: IpNet) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    push_addr(&mut key, network.addr());
    key.push(network.prefix_len());
    key
}

fn push_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

/// Reads an address [`push_addr`] wrote from the front of `bytes`; the rest.
fn take_addr(bytes: &[u8]) -> Option<(IpAddr, &[u8])> {
    let (&family, rest) = bytes.split_first()?;
    match family {
        4 => {
            let (octets, rest) = rest.split_first_chunk::<4>()?;
            Some((IpAddr::from(*octets), rest))
        }
        6 => {
            let (octets, rest) = rest.split_first_chunk::<16>()?;
            Some((IpAddr::from(*octets), rest))
        }
        _ => None,
    }
}

/// The network a key [`network_key`] made names.
pub(super) fn network_of_key(key: &[u8]) -> Option<IpNet> {
    let (addr, rest) = take_addr(key)?;
    let [prefix_len] = rest else {
        return None;
    };
    IpNet::new(addr, *prefix_len).ok()
}

/// A binding as a value: its subscriber (32 bytes), expiry (8, big
/// endian), then its source: 0 (admin), or 1, the gateway's address and the
/// accounting session id.
pub(super) fn encode(binding: &Bound) -> Vec<u8> {
    let mut value = Vec::with_capacity(64);
    value.extend_from_slice(&binding.subscriber.0);
    value.extend_from_slice(&binding.expires_ms.to_be_bytes());
    match &binding.source {
        BindingSource::Admin => value.push(0),
        BindingSource::Radius { nas, session_id } => {
            value.push(1);
            push_addr(&mut value, *nas);
            value.extend_from_slice(session_id);
        }
    }
    value
}

pub(super) fn decode(key: &[u8], value: &[u8]) -> Option<Bound> {
    let network = network_of_key(key)?;
    let (subscriber, rest) = value.split_first_chunk::<32>()?;
    let (expires, rest) = rest.split_first_chunk::<8>()?;
    let source = match rest.split_first()? {
        (0, []) => BindingSource::Admin,
        (1, rest) => {
            let (nas, session_id) = take_addr(rest)?;
            BindingSource::Radius {
                nas,
                session_id: Arc::from(session_id),
            }
        }
        _ => return None,
    };
    Some(Bound {
        network,
        subscriber: SubscriberRef(*subscriber),
        expires_ms: u64::from_be_bytes(*expires),
        source,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn any_bound() -> impl Strategy<Value = Bound> {
        let addr = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ];
        let source = prop_oneof![
            Just(BindingSource::Admin),
            (
                any::<[u8; 4]>(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(nas, id)| BindingSource::Radius {
                    nas: IpAddr::from(nas),
                    session_id: Arc::from(id),
                }),
        ];
        (addr, 0u8..=128, any::<[u8; 32]>(), any::<u64>(), source).prop_map(
            |(addr, len, subscriber, expires_ms, source)| {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                Bound {
                    network: IpNet::new(addr, len.min(max)).unwrap(),
                    subscriber: SubscriberRef(subscriber),
                    expires_ms,
                    source,
                }
            },
        )
    }

    proptest! {
        #[test]
        fn every_binding_reads_back_as_written(bound in any_bound()) {
            let key = network_key(bound.network);
            prop_assert_eq!(decode(&key, &encode(&bound)), Some(bound));
        }

        #[test]
        fn garbage_is_refused_or_reads_back_the_same(
            key in proptest::collection::vec(any::<u8>(), 0..20),
            value in proptest::collection::vec(any::<u8>(), 0..60),
        ) {
            if let Some(bound) = decode(&key, &value) {
                prop_assert_eq!(network_key(bound.network), key);
                prop_assert_eq!(encode(&bound), value);
            }
        }
    }
}
