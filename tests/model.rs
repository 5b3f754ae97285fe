//! What the store must do, said by a model: a plain in-memory map of
//! associations (in the order each subscriber got them) and codes.
//!
//! A state-machine property test drives random sequences of operations
//! (associate, with rebinds and supersedes at a small cap; revoke; erase;
//! retention; code register and remove; snapshot; restart) against the real
//! store on RocksDB. Each change's future is dropped at a random point (or
//! run to its end): afterwards the store must show the model's state
//! before the change or after it, never anything between. After every
//! step three views must agree: the live index, a fresh replay of the log,
//! and the model; and no record of the log may name an erased subscriber.
//!
//! The budget is fixed (`CASES` sequences of up to `STEPS` steps); the seed
//! is printed on failure, and `HOMECMP_MODEL_SEED=<hex>` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, poll_fn};
use std::path::Path;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use homecmp::store::index::Reader;
use homecmp::store::{self, EventLog, IdentitySource, Index, NewAssociation, Store};
use homecmp::wire::{ClientId, IndirectCode, SubscriberRef};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const CASES: u32 = 48;
const STEPS: usize = 60;
const CLIENTIDS: u8 = 8;
const SUBSCRIBERS: u8 = 3;
const CODES: u8 = 4;
/// Small, so that creations supersede often.
const CAP: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Associate {
        client: u8,
        sub: u8,
        rebind: bool,
    },
    Revoke {
        client: u8,
    },
    Erase {
        sub: u8,
    },
    Register {
        code: u8,
        target: u8,
    },
    Remove {
        code: u8,
    },
    /// `log compact` with the server stopped: blanks what ended.
    Retention,
    Snapshot,
    Restart,
}

/// A step: an operation, and after how many polls its future is dropped
/// (`None`: run to its end).
#[derive(Debug, Clone)]
struct Step {
    op: Op,
    drop_after: Option<u8>,
}

fn any_step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        6 => (0..CLIENTIDS, 0..SUBSCRIBERS, any::<bool>())
            .prop_map(|(client, sub, rebind)| Op::Associate { client, sub, rebind }),
        2 => (0..CLIENTIDS).prop_map(|client| Op::Revoke { client }),
        1 => (0..SUBSCRIBERS).prop_map(|sub| Op::Erase { sub }),
        2 => (0..CODES, 0..3u8).prop_map(|(code, target)| Op::Register { code, target }),
        1 => (0..CODES).prop_map(|code| Op::Remove { code }),
        1 => Just(Op::Retention),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Restart),
    ];
    (op, proptest::option::weighted(0.4, 0..6u8))
        .prop_map(|(op, drop_after)| Step { op, drop_after })
}

/// The model: what the store must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    /// Clientids of each subscriber, oldest first.
    held: BTreeMap<u8, Vec<u8>>,
    codes: BTreeMap<u8, u8>,
    /// Subscribers erased and not associated since: no record names them.
    erased: BTreeSet<u8>,
}

impl Model {
    fn owner(&self, client: u8) -> Option<u8> {
        self.held
            .iter()
            .find(|(_, held)| held.contains(&client))
            .map(|(&sub, _)| sub)
    }

    /// DESIGN §4's association rule, in the plainest terms.
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Associate {
                client,
                sub,
                rebind,
            } => {
                match self.owner(client) {
                    Some(owner) if owner == sub || !rebind => return,
                    Some(owner) => self.held.get_mut(&owner).unwrap().retain(|&c| c != client),
                    None => {}
                }
                let held = self.held.entry(sub).or_default();
                while held.len() >= CAP {
                    held.remove(0);
                }
                held.push(client);
                self.erased.remove(&sub);
            }
            Op::Revoke { client } => {
                for held in self.held.values_mut() {
                    held.retain(|&c| c != client);
                }
            }
            Op::Erase { sub } => {
                self.held.remove(&sub);
                self.erased.insert(sub);
            }
            Op::Register { code, target } => {
                self.codes.insert(code, target);
            }
            Op::Remove { code } => {
                self.codes.remove(&code);
            }
            Op::Retention | Op::Snapshot | Op::Restart => {}
        }
        self.held.retain(|_, held| !held.is_empty());
    }
}

fn clientid(client: u8) -> ClientId {
    ClientId::parse(&format!("model-{client}")).unwrap()
}

fn subscriber(sub: u8) -> SubscriberRef {
    SubscriberRef([sub + 1; 32])
}

fn code(code: u8) -> IndirectCode {
    IndirectCode::parse(&format!("2001000001model{code}")).unwrap()
}

fn target(target: u8) -> String {
    format!("https://example.org/{target}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What an index holds of this test's universe, in the model's terms.
fn observe(index: &Index) -> Model {
    let mut held = BTreeMap::new();
    for sub in 0..SUBSCRIBERS {
        let ids: Vec<u8> = index
            .clientids_of(&subscriber(sub))
            .iter()
            .map(|id| id.as_str()["model-".len()..].parse().unwrap())
            .collect();
        if !ids.is_empty() {
            held.insert(sub, ids);
        }
    }
    // Every clientid's own entry agrees with its subscriber's list.
    for client in 0..CLIENTIDS {
        let owner = index.association(clientid(client).as_str()).map(|a| {
            (0..SUBSCRIBERS)
                .find(|&s| subscriber(s) == a.subscriber)
                .unwrap()
        });
        let listed = held
            .iter()
            .find(|(_, ids): &(&u8, &Vec<u8>)| ids.contains(&client))
            .map(|(&s, _)| s);
        assert_eq!(
            owner, listed,
            "clientid {client}: its entry and its subscriber's list differ"
        );
    }
    let codes = (0..CODES)
        .filter_map(|c| {
            let entry = index.code(&code(c), Reader::Operator)?;
            let t = entry.target.rsplit('/').next().unwrap().parse().unwrap();
            Some((c, t))
        })
        .collect();
    Model {
        held,
        codes,
        erased: BTreeSet::new(),
    }
}

/// A fresh replay of the log at `path` (read beside the writer).
fn replayed(path: &Path) -> Model {
    let log = EventLog::open_read_only(path).unwrap();
    let index = Index::new();
    store::replay(&log, &index, |_, _| true).expect("the log replays");
    observe(&index)
}

/// The subscribers any record of the log names.
fn named_in_log(path: &Path) -> BTreeSet<u8> {
    let log = EventLog::open_read_only(path).unwrap();
    let mut named = BTreeSet::new();
    for item in log.read_from(1) {
        let (_, record) = item.unwrap();
        let json = serde_json::to_string(&record).unwrap();
        for sub in 0..SUBSCRIBERS {
            if json.contains(&subscriber(sub).to_hex()) {
                named.insert(sub);
            }
        }
    }
    named
}

/// Polls `future` up to `polls` times, yielding between polls (the log's
/// writer gets on meanwhile, or not), then drops it.
async fn poll_then_drop(future: impl Future, polls: u8) {
    let mut future = pin!(future);
    for _ in 0..polls {
        let ready = poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await;
        if ready {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Runs `future` to its end, or drops it after `drop_after` polls.
async fn run(future: impl Future, drop_after: Option<u8>) {
    match drop_after {
        Some(polls) => poll_then_drop(future, polls).await,
        None => {
            future.await;
        }
    }
}

/// One data dir and the store open on it.
struct Rig {
    dir: tempfile::TempDir,
    store: Option<Store>,
}

impl Rig {
    fn open(dir: tempfile::TempDir) -> Self {
        let store = open_store(dir.path());
        Self {
            dir,
            store: Some(store),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join(homecmp::LOG_DIR)
    }

    /// Waits until nothing handed over is left unapplied: no rewrite under
    /// way, and every append queued before now written and applied.
    async fn settle(&self) {
        drop(self.store().hold_rewrites().await);
        self.store().log().between_batches(|| ()).await.unwrap();
    }

    /// Closes the store (its log and writer), runs `between` on the data
    /// dir, and opens the store again, as a restart does.
    async fn reopen(&mut self, between: impl FnOnce(&Path)) {
        self.settle().await;
        drop(self.store.take());
        between(self.dir.path());
        self.store = Some(open_store(self.dir.path()));
    }
}

/// The store on `data_dir`'s log, from its snapshot where there is one.
/// A moment's retries: a task that held a clone of the last store (an
/// erasure finishing) may still be letting go of it.
fn open_store(data_dir: &Path) -> Store {
    let log = data_dir.join(homecmp::LOG_DIR);
    let snapshot = store::snapshot::path(data_dir);
    for _ in 0..100 {
        match Store::open_from(&log, &snapshot) {
            Ok((store, _)) => return store,
            Err(e) if e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the store does not open on its log: {e}"),
        }
    }
    panic!("the last store never let go of the log");
}

async fn step(rig: &mut Rig, step: &Step) {
    let store = rig.store().clone();
    let now = now_ms();
    if matches!(step.op, Op::Retention | Op::Restart) {
        // The rig closes the store: no clone may be left open.
        drop(store);
        match step.op {
            Op::Retention => {
                rig.reopen(|data_dir| {
                    homecmp::sre::compact(data_dir, Duration::ZERO, &mut std::io::sink())
                        .expect("retention on a stopped store");
                })
                .await;
            }
            _ => rig.reopen(|_| {}).await,
        }
        return;
    }
    match step.op {
        Op::Associate {
            client,
            sub,
            rebind,
        } => {
            let new = NewAssociation {
                clientid: clientid(client),
                subscriber: subscriber(sub),
                source: IdentitySource::SessionBinding,
                client_addr: "127.1.0.1".parse().unwrap(),
            };
            run(store.associate(new, rebind, CAP, now), step.drop_after).await;
        }
        Op::Revoke { client } => run(store.revoke(&clientid(client), now), step.drop_after).await,
        Op::Erase { sub } => {
            run(
                store.erase_subscriber(subscriber(sub), now),
                step.drop_after,
            )
            .await
        }
        Op::Register { code: c, target: t } => {
            run(
                store.register_code(&code(c), &target(t), now),
                step.drop_after,
            )
            .await;
        }
        Op::Remove { code: c } => run(store.remove_code(&code(c), now), step.drop_after).await,
        Op::Snapshot => run(store.write_snapshot(), step.drop_after).await,
        Op::Retention | Op::Restart => unreachable!("handled above"),
    }
    rig.settle().await;
}

/// Runs one sequence; `Err` names the first step where the store and the
/// model parted.
fn check_sequence(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut rig = Rig::open(tempfile::tempdir().unwrap());
        let mut model = Model::default();
        for (n, s) in steps.iter().enumerate() {
            step(&mut rig, s).await;
            let live = observe(rig.store().index());
            let mut after = model.clone();
            after.apply(&s.op);
            // A dropped change happened wholly or not at all. Never
            // polled, it did not; an erasure polled once has its turn
            // (nothing else rewrites here) and finishes in its own task.
            let comparable = |m: &Model| Model {
                erased: BTreeSet::new(),
                ..m.clone()
            };
            let started = match (s.drop_after, &s.op) {
                (Some(0), _) => Some(false),
                (None, _) | (Some(_), Op::Erase { .. }) => Some(true),
                (Some(_), _) => None,
            };
            if started != Some(false) && live == comparable(&after) {
                model = after;
            } else if started != Some(true) && live == comparable(&model) {
                // Dropped before it was handed over: nothing happened.
            } else {
                return Err(TestCaseError::fail(format!(
                    "step {n} {s:?}:\n  live  {live:?}\n  model {after:?}\n  (before {model:?})"
                )));
            }
            let replay = replayed(&rig.log_path());
            prop_assert_eq!(
                &replay,
                &live,
                "step {}: a fresh replay differs from the index",
                n
            );
            let named = named_in_log(&rig.log_path());
            let leaked: Vec<_> = named.intersection(&model.erased).collect();
            prop_assert!(
                leaked.is_empty(),
                "step {}: erased subscribers {:?} still in the log",
                n,
                leaked
            );
        }
        Ok(())
    })
}

#[test]
fn the_store_does_what_the_model_says() {
    let seed: [u8; 32] = match std::env::var("HOMECMP_MODEL_SEED") {
        Ok(hex) => {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("a hex seed"))
                .collect();
            bytes.try_into().expect("a 32-byte seed")
        }
        Err(_) => std::array::from_fn(|_| rand_byte()),
    };
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let steps = proptest::collection::vec(any_step(), 1..=STEPS);
    if let Err(e) = runner.run(&steps, check_sequence) {
        panic!("{e}\nreplay with HOMECMP_MODEL_SEED={hex}");
    }
}

/// A random byte from the standard library's hasher keys (no rand crate).
fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8) as u8
}
