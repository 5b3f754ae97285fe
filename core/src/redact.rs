//! Rewriting history without changing the state (subscriber erasure and
//! retention), as a pure function of the records.
//!
//! An association *instance* lives from the record that gives a clientid to
//! a subscriber (created, or the `to` side of a rebind) to the record that
//! ends it (revoked, or the `from` side of a rebind); a code instance from a
//! registration to the next registration or removal of that code. A rule
//! ([`Doom`]) picks ended instances; their records are blanked
//! ([`Event::Redacted`], same sequence number and time) or, where a record
//! also carries an instance that stays (a rebind), rewritten to carry only
//! that one. Replaying the rewritten log gives every instance that stays
//! exactly as before (same sequence numbers, same order) and none of the
//! doomed ones, so the state at the end is the same.

use std::collections::HashMap;

use crate::model::{Event, Record, RedactReason, RevokeReason, Seq};
use crate::wire::SubscriberRef;

/// Which ended instances to remove from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doom {
    /// Every association of this subscriber (all must have ended: revoke
    /// them first). Codes are untouched.
    Subscriber(SubscriberRef),
    /// Associations and code registrations that ended before this time
    /// (Unix milliseconds).
    EndedBefore(u64),
}

impl Doom {
    fn reason(self) -> RedactReason {
        match self {
            Doom::Subscriber(_) => RedactReason::Erased,
            Doom::EndedBefore(_) => RedactReason::Retention,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Instance {
    /// `None` for a code.
    subscriber: Option<SubscriberRef>,
    /// Sequence number and time of the record that ended it.
    end: Option<(Seq, u64)>,
}

/// What a first pass over the log learned: every instance and its end.
#[derive(Debug, Default)]
pub struct Lifetimes {
    /// By the sequence number of the record that started it.
    instances: HashMap<Seq, Instance>,
    /// Record that ends an instance -> the instance's start.
    ends: HashMap<Seq, Seq>,
    /// Records that end an instance whose start an earlier rewrite blanked
    /// (a rewrite that went in several steps): each an instance of its own.
    orphan_ends: HashMap<Seq, Instance>,
    live_clientids: HashMap<String, Seq>,
    live_codes: HashMap<String, Seq>,
}

impl Lifetimes {
    /// Feeds one record, in sequence order.
    pub fn observe(&mut self, seq: Seq, record: &Record) {
        let at = record.at_ms;
        match &record.event {
            Event::AssociationCreated {
                clientid,
                subscriber,
                ..
            } => self.start_association(clientid, *subscriber, seq),
            Event::AssociationRevoked {
                clientid,
                subscriber,
                ..
            } => {
                self.end_association(clientid, *subscriber, seq, at);
            }
            Event::AssociationRebound {
                clientid, from, to, ..
            } => {
                self.end_association(clientid, *from, seq, at);
                self.start_association(clientid, *to, seq);
            }
            Event::CodeRegistered { code, .. } | Event::CodeRegisteredWithRules { code, .. } => {
                if let Some(start) = self.live_codes.remove(code) {
                    self.end(start, seq, at);
                }
                self.instances.insert(
                    seq,
                    Instance {
                        subscriber: None,
                        end: None,
                    },
                );
                self.live_codes.insert(code.clone(), seq);
            }
            Event::CodeRemoved { code } => match self.live_codes.remove(code) {
                Some(start) => self.end(start, seq, at),
                None => self.orphan_end(None, seq, at),
            },
            // Counts name codes only: no subscriber, nothing that ends. A
            // cluster's history rewrite names no one: what it replaced is
            // read where it stands.
            Event::Redacted { .. }
            | Event::ScansCounted { .. }
            | Event::RuleScansCounted { .. }
            | Event::HistoryRewritten { .. } => {}
        }
    }

    fn start_association(&mut self, clientid: &str, subscriber: SubscriberRef, seq: Seq) {
        self.instances.insert(
            seq,
            Instance {
                subscriber: Some(subscriber),
                end: None,
            },
        );
        self.live_clientids.insert(clientid.to_owned(), seq);
    }

    fn end_association(&mut self, clientid: &str, subscriber: SubscriberRef, seq: Seq, at: u64) {
        match self.live_clientids.remove(clientid) {
            Some(start) => self.end(start, seq, at),
            None => self.orphan_end(Some(subscriber), seq, at),
        }
    }

    /// An end whose start is not in the log (blanked by an earlier
    /// rewrite): it is doomed as an instance of its own would be.
    fn orphan_end(&mut self, subscriber: Option<SubscriberRef>, seq: Seq, at: u64) {
        let end = Some((seq, at));
        self.orphan_ends.insert(seq, Instance { subscriber, end });
    }

    fn end(&mut self, start: Seq, seq: Seq, at: u64) {
        if let Some(instance) = self.instances.get_mut(&start) {
            instance.end = Some((seq, at));
        }
        self.ends.insert(seq, start);
    }

    fn doomed(&self, start: Seq, doom: Doom) -> bool {
        self.instances
            .get(&start)
            .is_some_and(|instance| instance_doomed(instance, doom))
    }

    fn ended_here_is_doomed(&self, seq: Seq, doom: Doom) -> bool {
        match self.ends.get(&seq) {
            Some(&start) => self.doomed(start, doom),
            None => self
                .orphan_ends
                .get(&seq)
                .is_some_and(|instance| instance_doomed(instance, doom)),
        }
    }

    /// Second pass: the event `seq` must become, if it must change.
    pub fn rewrite(&self, seq: Seq, record: &Record, doom: Doom) -> Option<Event> {
        let blank = Event::Redacted {
            reason: doom.reason(),
        };
        match &record.event {
            Event::AssociationCreated { .. }
            | Event::CodeRegistered { .. }
            | Event::CodeRegisteredWithRules { .. } => self.doomed(seq, doom).then_some(blank),
            Event::AssociationRevoked { .. } | Event::CodeRemoved { .. } => {
                self.ended_here_is_doomed(seq, doom).then_some(blank)
            }
            Event::AssociationRebound {
                clientid,
                from,
                to,
                source,
                client_addr,
            } => match (self.ended_here_is_doomed(seq, doom), self.doomed(seq, doom)) {
                (true, true) => Some(blank),
                // Only the new subscriber's instance stays: as a creation.
                (true, false) => Some(Event::AssociationCreated {
                    clientid: clientid.clone(),
                    subscriber: *to,
                    source: *source,
                    client_addr: *client_addr,
                }),
                // Only the old one stays: it ends here, the clientid moved.
                (false, true) => Some(Event::AssociationRevoked {
                    clientid: clientid.clone(),
                    subscriber: *from,
                    reason: RevokeReason::Moved,
                }),
                (false, false) => None,
            },
            Event::Redacted { .. }
            | Event::ScansCounted { .. }
            | Event::RuleScansCounted { .. }
            | Event::HistoryRewritten { .. } => None,
        }
    }
}

fn instance_doomed(instance: &Instance, doom: Doom) -> bool {
    match (doom, instance.end) {
        (_, None) => false,
        (Doom::Subscriber(who), Some(_)) => instance.subscriber == Some(who),
        (Doom::EndedBefore(cutoff), Some((_, at))) => at < cutoff,
    }
}

/// Both passes over `records`: the (sequence, new event) pairs to write.
pub fn plan_redaction(records: &[(Seq, Record)], doom: Doom) -> Vec<(Seq, Event)> {
    let mut lifetimes = Lifetimes::default();
    for (seq, record) in records {
        lifetimes.observe(*seq, record);
    }
    records
        .iter()
        .filter_map(|(seq, record)| Some((*seq, lifetimes.rewrite(*seq, record, doom)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdentitySource;

    const A: SubscriberRef = SubscriberRef([1; 32]);
    const B: SubscriberRef = SubscriberRef([2; 32]);

    fn at(at_ms: u64, event: Event) -> Record {
        Record {
            at_ms,
            event,
            actor: None,
        }
    }

    fn created(id: &str, who: SubscriberRef) -> Event {
        Event::AssociationCreated {
            clientid: id.into(),
            subscriber: who,
            source: IdentitySource::SessionBinding,
            client_addr: "127.1.0.1".parse().unwrap(),
        }
    }

    fn revoked(id: &str, who: SubscriberRef) -> Event {
        Event::AssociationRevoked {
            clientid: id.into(),
            subscriber: who,
            reason: RevokeReason::Admin,
        }
    }

    fn rebound(id: &str, from: SubscriberRef, to: SubscriberRef) -> Event {
        Event::AssociationRebound {
            clientid: id.into(),
            from,
            to,
            source: IdentitySource::SessionBinding,
            client_addr: "127.1.0.2".parse().unwrap(),
        }
    }

    fn log(events: Vec<Event>) -> Vec<(Seq, Record)> {
        (1..)
            .zip(events)
            .map(|(seq, e)| (seq, at(seq * 1000, e)))
            .collect()
    }

    type State = (
        std::collections::BTreeMap<String, (SubscriberRef, Seq)>,
        std::collections::BTreeMap<String, String>,
    );

    /// The index's rules in miniature: every event must apply.
    fn replay(records: &[(Seq, Record)]) -> Result<State, String> {
        let (mut owners, mut codes) = State::default();
        for (seq, record) in records {
            let owned = |owners: &std::collections::BTreeMap<String, (SubscriberRef, Seq)>,
                         id: &str,
                         who: &SubscriberRef| {
                match owners.get(id) {
                    Some((o, _)) if o == who => Ok(()),
                    _ => Err(format!("{seq}: {id} not owned")),
                }
            };
            match &record.event {
                Event::AssociationCreated {
                    clientid,
                    subscriber,
                    ..
                } => {
                    if owners
                        .insert(clientid.clone(), (*subscriber, *seq))
                        .is_some()
                    {
                        return Err(format!("{seq}: {clientid} already associated"));
                    }
                }
                Event::AssociationRevoked {
                    clientid,
                    subscriber,
                    ..
                } => {
                    owned(&owners, clientid, subscriber)?;
                    owners.remove(clientid);
                }
                Event::AssociationRebound {
                    clientid, from, to, ..
                } => {
                    owned(&owners, clientid, from)?;
                    owners.insert(clientid.clone(), (*to, *seq));
                }
                Event::CodeRegistered { code, target }
                | Event::CodeRegisteredWithRules { code, target, .. } => {
                    codes.insert(code.clone(), target.clone());
                }
                Event::CodeRemoved { code } => {
                    codes
                        .remove(code)
                        .ok_or(format!("{seq}: {code} not registered"))?;
                }
                Event::Redacted { .. }
                | Event::ScansCounted { .. }
                | Event::RuleScansCounted { .. }
                | Event::HistoryRewritten { .. } => {}
            }
        }
        Ok((owners, codes))
    }

    /// Applies `plan` and checks the state is the same and every event applies.
    fn rewritten(records: &[(Seq, Record)], doom: Doom) -> Vec<(Seq, Record)> {
        let plan: HashMap<Seq, Event> = plan_redaction(records, doom).into_iter().collect();
        let new: Vec<(Seq, Record)> = records
            .iter()
            .map(|(seq, r)| {
                let event = plan.get(seq).cloned().unwrap_or_else(|| r.event.clone());
                (*seq, at(r.at_ms, event))
            })
            .collect();
        assert_eq!(
            replay(&new),
            replay(records),
            "same state, every event applies"
        );
        new
    }

    #[test]
    fn rewritten_logs_replay_to_the_same_state_and_name_no_erased_subscriber() {
        let records = log(vec![
            created("x", A),
            created("y", B),
            rebound("y", B, A),
            created("w", A),
            rebound("w", A, B),
            revoked("x", A),
            revoked("y", A),
            Event::CodeRegistered {
                code: "c".into(),
                target: "t".into(),
            },
            Event::CodeRemoved { code: "c".into() },
        ]);
        let erased = rewritten(&records, Doom::Subscriber(A));
        let mentions_a = |e: &Event| match e {
            Event::AssociationCreated { subscriber, .. }
            | Event::AssociationRevoked { subscriber, .. } => *subscriber == A,
            Event::AssociationRebound { from, to, .. } => *from == A || *to == A,
            _ => false,
        };
        assert!(
            !erased.iter().any(|(_, r)| mentions_a(&r.event)),
            "{erased:?}"
        );
        for cutoff in [0, 3_500, 7_500, 100_000] {
            rewritten(&records, Doom::EndedBefore(cutoff));
        }
    }

    #[test]
    fn erasure_blanks_the_subscribers_instances_and_keeps_the_others() {
        let records = log(vec![
            created("x", A),    // 1: A's, ended at 4
            created("y", B),    // 2: B's, stays
            rebound("y", B, A), // 3: ends B's y, starts A's y (ended at 5)
            revoked("x", A),    // 4
            revoked("y", A),    // 5
            created("z", A),    // 6: A's, still live: not touched
        ]);
        let plan = plan_redaction(&records, Doom::Subscriber(A));
        let blank = Event::Redacted {
            reason: RedactReason::Erased,
        };
        assert_eq!(
            plan,
            vec![
                (1, blank.clone()),
                (
                    3,
                    Event::AssociationRevoked {
                        clientid: "y".into(),
                        subscriber: B,
                        reason: RevokeReason::Moved
                    }
                ),
                (4, blank.clone()),
                (5, blank),
            ]
        );
    }

    #[test]
    fn a_rebind_away_from_the_erased_subscriber_becomes_a_creation() {
        let records = log(vec![created("y", A), rebound("y", A, B)]);
        let plan = plan_redaction(&records, Doom::Subscriber(A));
        assert_eq!(plan[0].0, 1);
        assert_eq!(
            plan[1],
            (2, {
                let Event::AssociationRebound {
                    source,
                    client_addr,
                    ..
                } = records[1].1.event
                else {
                    unreachable!()
                };
                Event::AssociationCreated {
                    clientid: "y".into(),
                    subscriber: B,
                    source,
                    client_addr,
                }
            })
        );
    }

    #[test]
    fn retention_removes_what_ended_before_the_cutoff_only() {
        let records = log(vec![
            created("x", A), // 1 (1 s)
            revoked("x", A), // 2 (2 s): ended before 3 s
            Event::CodeRegistered {
                code: "c".into(),
                target: "t1".into(),
            }, // 3
            Event::CodeRegistered {
                code: "c".into(),
                target: "t2".into(),
            }, // 4: replaces 3 at 4 s
            created("y", A), // 5
            revoked("y", A), // 6 (6 s): after the cutoff
        ]);
        let plan = plan_redaction(&records, Doom::EndedBefore(4_500));
        let seqs: Vec<Seq> = plan.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(plan.iter().all(|(_, e)| *e
            == Event::Redacted {
                reason: RedactReason::Retention
            }));
    }

    /// A valid log from `ops` (kind, clientid, subscriber), each op that
    /// does not apply to the state so far skipped; a second apart each.
    fn valid_log(ops: &[(u8, u8, u8)]) -> Vec<(Seq, Record)> {
        let who = |n: u8| SubscriberRef([n % 3 + 1; 32]);
        let (mut owners, mut codes) = (HashMap::new(), std::collections::HashSet::new());
        let mut events = Vec::new();
        for &(kind, id, n) in ops {
            let clientid = format!("c{}", id % 5);
            let code = format!("k{}", id % 2);
            let event = match (kind % 5, owners.get(&clientid).copied()) {
                (0, None) => created(&clientid, who(n)),
                (1, Some(owner)) => revoked(&clientid, owner),
                (2, Some(owner)) if owner != who(n) => rebound(&clientid, owner, who(n)),
                (3, _) => Event::CodeRegistered {
                    code: code.clone(),
                    target: format!("t{n}"),
                },
                (4, _) if codes.contains(&code) => Event::CodeRemoved { code: code.clone() },
                _ => continue,
            };
            match &event {
                Event::AssociationCreated { subscriber, .. } => {
                    owners.insert(clientid, *subscriber);
                }
                Event::AssociationRevoked { .. } => {
                    owners.remove(&clientid);
                }
                Event::AssociationRebound { to, .. } => {
                    owners.insert(clientid, *to);
                }
                Event::CodeRegistered { .. } => {
                    codes.insert(code);
                }
                _ => {
                    codes.remove(&code);
                }
            }
            events.push(event);
        }
        log(events)
    }

    fn apply(records: &[(Seq, Record)], plan: &[(Seq, Event)]) -> Vec<(Seq, Record)> {
        let plan: HashMap<Seq, &Event> = plan.iter().map(|(s, e)| (*s, e)).collect();
        records
            .iter()
            .map(|(seq, r)| {
                let event = plan
                    .get(seq)
                    .map_or_else(|| r.event.clone(), |e| (*e).clone());
                (*seq, at(r.at_ms, event))
            })
            .collect()
    }

    proptest::proptest! {
        /// A rewrite made in steps (as cluster mode publishes one that is
        /// too large for one event: the first part written, then planned
        /// again on the log it left) ends where the rewrite made at once
        /// does, whatever the log, the doom and where it is cut.
        #[test]
        fn a_rewrite_in_two_steps_ends_where_one_at_once_does(
            ops in proptest::collection::vec((0u8..5, 0u8..5, 0u8..3), 0..60),
            erase in proptest::bool::ANY,
            cutoff in 0u64..70_000,
            cut in 0usize..80,
        ) {
            let records = valid_log(&ops);
            let doom = match erase {
                true => Doom::Subscriber(A),
                false => Doom::EndedBefore(cutoff),
            };
            let plan = plan_redaction(&records, doom);
            let at_once = apply(&records, &plan);
            let first = apply(&records, &plan[..cut.min(plan.len())]);
            let then = apply(&first, &plan_redaction(&first, doom));
            proptest::prop_assert_eq!(&then, &at_once);
            proptest::prop_assert_eq!(replay(&then), replay(&records));
        }
    }
}
