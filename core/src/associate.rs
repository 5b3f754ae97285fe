//! The association rule (DESIGN §4) as a pure function: given what stands
//! for a clientid and what its new subscriber already holds, which events
//! make the change. The store locks, plans with [`plan_association`],
//! appends the events and applies them; it decides nothing itself.

use crate::model::{Association, Event, NewAssociation, RevokeReason};
use crate::wire::{ClientId, SubscriberRef};

/// What to do with an association request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to write: this association stands (the same subscriber, or
    /// another one and no `rebind`).
    Existing(Association),
    /// Write `events` in one batch, in order.
    Write {
        events: Vec<Event>,
        /// Clientids revoked (reason `superseded`) to keep the cap.
        superseded: Vec<ClientId>,
        /// `Some(from)` when the clientid moves from another subscriber.
        rebound_from: Option<SubscriberRef>,
    },
}

/// Associates `new.clientid` with `new.subscriber`: nothing when it already
/// is associated (whoever to) unless `rebind` moves it from another
/// subscriber; and the subscriber's oldest clientids (`held`, oldest first)
/// revoked until one more fits under `cap` (at least 1).
pub fn plan_association(
    current: Option<Association>,
    held: &[ClientId],
    new: &NewAssociation,
    rebind: bool,
    cap: usize,
) -> Plan {
    let rebound_from = match current {
        Some(a) if a.subscriber == new.subscriber || !rebind => return Plan::Existing(a),
        Some(a) => Some(a.subscriber),
        None => None,
    };
    let excess = (held.len() + 1).saturating_sub(cap.max(1));
    let superseded: Vec<ClientId> = held.iter().take(excess).cloned().collect();
    let mut events: Vec<Event> = superseded
        .iter()
        .map(|id| Event::AssociationRevoked {
            clientid: id.as_str().to_owned(),
            subscriber: new.subscriber,
            reason: RevokeReason::Superseded,
        })
        .collect();
    let clientid = new.clientid.as_str().to_owned();
    events.push(match rebound_from {
        None => Event::AssociationCreated {
            clientid,
            subscriber: new.subscriber,
            source: new.source,
            client_addr: new.client_addr,
        },
        Some(from) => Event::AssociationRebound {
            clientid,
            from,
            to: new.subscriber,
            source: new.source,
            client_addr: new.client_addr,
        },
    });
    Plan::Write {
        events,
        superseded,
        rebound_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdentitySource;

    fn id(text: &str) -> ClientId {
        ClientId::parse(text).unwrap()
    }

    fn sub(n: u8) -> SubscriberRef {
        SubscriberRef([n; 32])
    }

    fn asking(clientid: &str, subscriber: u8) -> NewAssociation {
        NewAssociation {
            clientid: id(clientid),
            subscriber: sub(subscriber),
            source: IdentitySource::SessionBinding,
            client_addr: "127.1.0.1".parse().unwrap(),
        }
    }

    fn standing(subscriber: u8) -> Option<Association> {
        Some(Association {
            subscriber: sub(subscriber),
            seq: 7,
        })
    }

    #[test]
    fn a_new_clientid_is_created() {
        let plan = plan_association(None, &[], &asking("a", 1), false, 8);
        let Plan::Write {
            events,
            superseded,
            rebound_from,
        } = plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], Event::AssociationCreated { clientid, .. } if clientid == "a")
        );
        assert!(superseded.is_empty() && rebound_from.is_none());
    }

    #[test]
    fn what_stands_stays_unless_rebind_moves_it() {
        for (current, rebind) in [(1, false), (1, true), (2, false)] {
            let plan = plan_association(standing(current), &[], &asking("a", 1), rebind, 8);
            assert_eq!(plan, Plan::Existing(standing(current).unwrap()));
        }
        let plan = plan_association(standing(2), &[], &asking("a", 1), true, 8);
        let Plan::Write {
            events,
            rebound_from,
            ..
        } = plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(rebound_from, Some(sub(2)));
        assert!(
            matches!(&events[..], [Event::AssociationRebound { from, to, .. }] if *from == sub(2) && *to == sub(1))
        );
    }

    #[test]
    fn the_cap_supersedes_the_oldest_first() {
        let held = [id("old"), id("mid"), id("new")];
        let plan = plan_association(None, &held, &asking("next", 1), false, 2);
        let Plan::Write {
            events, superseded, ..
        } = plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(superseded, vec![id("old"), id("mid")]);
        assert_eq!(events.len(), 3, "two revocations, then the creation");
        assert!(
            matches!(&events[0], Event::AssociationRevoked { clientid, reason: RevokeReason::Superseded, .. } if clientid == "old")
        );
        assert!(matches!(&events[2], Event::AssociationCreated { .. }));
        // A cap of 0 behaves as 1: the subscriber keeps the newest.
        let plan = plan_association(None, &held, &asking("next", 1), false, 0);
        assert!(matches!(plan, Plan::Write { superseded, .. } if superseded.len() == 3));
    }
}
