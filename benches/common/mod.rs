//! What more than one bench needs.

/// splitmix64's finaliser: a bijection on u64 that scatters bits (keys and
/// clientids that look random, yet are distinct and reproducible).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Resident memory of a process (`"self"` or a pid), in KiB, from /proc.
#[allow(dead_code)] // not every bench that includes this module measures memory
pub fn rss_kib(process: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// N associations, two per subscriber, UUID-shaped clientids, with their
/// audit index keys, as the server's log writer would have written them.
#[allow(dead_code)] // not every bench that includes this module needs a log
pub fn generate(events: &std::path::Path, n: u64) {
    use homecmp::store::event::{encode_key, encode_value};
    use homecmp::store::{Event, IdentitySource, Record, audit};
    use homecmp::wire::SubscriberRef;

    let db = homecmp::store::log::open_db(&homecmp::store::log::db_options(), events).unwrap();
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..n {
        let (a, b) = (mix(i), mix(i ^ 0x5555));
        let clientid = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        );
        let s = mix(i / 2);
        let mut subscriber = [0u8; 32];
        for (k, chunk) in subscriber.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(s ^ k as u64).to_le_bytes());
        }
        let record = Record {
            at_ms: 1_780_000_000_000 + i,
            actor: None,
            event: Event::AssociationCreated {
                clientid,
                subscriber: SubscriberRef(subscriber),
                source: IdentitySource::SessionBinding,
                client_addr: std::net::IpAddr::from([127, 1, (i >> 8) as u8, i as u8]),
            },
        };
        batch.put(encode_key(i + 1), encode_value(&record).unwrap());
        audit::put(&db, &mut batch, i + 1, &audit::terms(&record));
        if batch.len() >= 50_000 {
            audit::mark(&db, &mut batch, i + 1);
            db.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    audit::mark(&db, &mut batch, n);
    db.write(batch).unwrap();
    // Both column families flushed, as a server's memtables are in time:
    // a read-only open then replays no WAL.
    db.flush().unwrap();
    db.flush_cf(&db.cf_handle(audit::CF).unwrap()).unwrap();
    db.compact_range::<&[u8], &[u8]>(None, None);
}

/// The sizes given on the command line (`cargo bench --bench X -- N...`),
/// else `default`; 20,000 for criterion's smoke run (`-- --test`).
#[allow(dead_code)] // not every bench that includes this module takes sizes
pub fn sizes(default: u64) -> Vec<u64> {
    let given: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let smoke = std::env::args().any(|a| a == "--test");
    match (given.is_empty(), smoke) {
        (false, _) => given,
        (true, true) => vec![20_000],
        (true, false) => vec![default],
    }
}
