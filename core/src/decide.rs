//! The authentication decision of DESIGN §4 and the resolution after it.

use std::sync::Arc;

use crate::model::{Associated, Association, IdentitySource};
use crate::wire::{ClientIdError, ClientIdRef, IndirectCode, RoutingPrefix, SubscriberRef};

use crate::identity::Identity;
use crate::refusal::Refusal;

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Refuse what fails authentication (default).
    #[default]
    Enforce,
    /// Decide and count, but resolve anyway: for rollout.
    Monitor,
    /// No MCC authentication at all.
    Off,
}

/// `auth.on_mismatch`: an associated clientid seen with another subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchPolicy {
    #[default]
    Reject,
    /// Move the association to the subscriber the network reports now.
    Rebind,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: AuthMode,
    pub on_mismatch: MismatchPolicy,
    pub routing_prefixes: Vec<RoutingPrefix>,
    /// Prefixes of peer CMPs this one forwards authenticated requests to
    /// (`[federation]`, §9.3.2).
    pub federated_prefixes: Vec<RoutingPrefix>,
    /// The community has a registry (MCR) that names the CMP of any other
    /// prefix: every prefix not this CMP's may be a peer's.
    pub peer_registry: bool,
}

impl Policy {
    /// Whether `code` is under one of this CMP's routing prefixes.
    pub fn owns(&self, code: &IndirectCode) -> bool {
        self.routing_prefixes
            .iter()
            .any(|p| p.as_str() == code.prefix())
    }
}

/// Proof that a request may see the code store. Made only here: by
/// [`decide`], and by [`permit_after`] once an association is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    association: AssociationState,
    /// Whether enforce mode would have let the request through: only then
    /// may it reach a peer CMP or the registry (monitor and off modes
    /// resolve the rest locally, and never amplify it).
    authenticated: bool,
}

/// The `association` field of a successful answer: whether this request
/// made the association (`created`), had it (`existing`), or needs none
/// (`none`: auth modes monitor and off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(rename_all = "snake_case")
)]
pub enum AssociationState {
    Existing,
    Created,
    None,
}

impl AssociationState {
    pub fn as_str(self) -> &'static str {
        match self {
            AssociationState::Existing => "existing",
            AssociationState::Created => "created",
            AssociationState::None => "none",
        }
    }
}

/// The permit a request earns when its association was made durable
/// (created or rebound by it); `None` when another request's stands
/// instead (decide again on that one).
pub fn permit_after(outcome: &Associated) -> Option<Permit> {
    match outcome {
        Associated::Created { .. } | Associated::Rebound { .. } => Some(Permit {
            association: AssociationState::Created,
            authenticated: true,
        }),
        Associated::Existing(_) => None,
    }
}

/// What a request earns once the association it asked for was carried out
/// (`outcome`): created or rebound by it, the permit of
/// [`permit_after`]; another request's association stands instead (a race
/// lost), the decision again on that one: it resolves as `existing`, or is
/// refused (a mismatch).
pub fn permit_for(
    policy: &Policy,
    clientid: ClientIdRef<'_>,
    outcome: &Associated,
    identity: &Identity,
) -> Result<Permit, Refusal> {
    if let Some(permit) = permit_after(outcome) {
        return Ok(permit);
    }
    let Associated::Existing(standing) = outcome else {
        return Err(Refusal::Unavailable);
    };
    match decide(policy, Some(Ok(clientid)), Some(*standing), identity) {
        Decision::Resolve(permit) => Ok(permit),
        Decision::Refuse(refusal) => Err(refusal),
        // A rebind that raced another: the client asks again.
        Decision::Associate { .. } | Decision::Monitored { .. } => Err(Refusal::Unavailable),
    }
}

impl Permit {
    pub fn association(&self) -> AssociationState {
        self.association
    }

    /// See the field: whether enforce mode would have let it through.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }
}

/// What the transport must do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated (or authentication not required): go on to [`resolve`].
    Resolve(Permit),
    /// Make the association durable first, then resolve with the permit of
    /// [`permit_after`]. `rebind` moves it from another subscriber.
    Associate {
        subscriber: SubscriberRef,
        source: IdentitySource,
        rebind: bool,
    },
    Refuse(Refusal),
    /// Monitor mode: `would` is what enforce would have answered; resolve
    /// without an association and count it.
    Monitored {
        would: Refusal,
        permit: Permit,
    },
}

/// The checks of DESIGN §4 after parsing, cheapest first: clientid present and
/// well-formed, its association, then the association path of §3.
///
/// `clientid` is the query's, parsed once at the edge (`None` when absent);
/// `association` is the index's answer for it (`None` when absent or
/// malformed); `identity` is who the network says
/// the client is. A created association is never decided here without a
/// subscriber, and nothing here looks at codes.
pub fn decide(
    policy: &Policy,
    clientid: Option<Result<ClientIdRef<'_>, ClientIdError>>,
    association: Option<Association>,
    identity: &Identity,
) -> Decision {
    let decision = authenticate(policy, clientid, association, identity);
    match (policy.mode, decision) {
        // Off: no authentication, but only what enforce would let through
        // may be forwarded.
        (AuthMode::Off, decision) => Decision::Resolve(Permit {
            association: AssociationState::None,
            authenticated: !matches!(decision, Decision::Refuse(_)),
        }),
        (AuthMode::Monitor, Decision::Refuse(would)) if would.is_authentication() => {
            Decision::Monitored {
                would,
                permit: Permit {
                    association: AssociationState::None,
                    authenticated: false,
                },
            }
        }
        (_, decision) => decision,
    }
}

fn authenticate(
    policy: &Policy,
    clientid: Option<Result<ClientIdRef<'_>, ClientIdError>>,
    association: Option<Association>,
    identity: &Identity,
) -> Decision {
    match clientid {
        None => return Decision::Refuse(Refusal::ClientIdRequired),
        Some(Err(e)) => return Decision::Refuse(Refusal::InvalidClientId(e)),
        Some(Ok(_)) => {}
    }
    match (association, &identity.subscriber) {
        (Some(a), Some((reported, source))) if a.subscriber != *reported => {
            match policy.on_mismatch {
                MismatchPolicy::Reject => Decision::Refuse(Refusal::AssociationMismatch),
                MismatchPolicy::Rebind => Decision::Associate {
                    subscriber: *reported,
                    source: *source,
                    rebind: true,
                },
            }
        }
        (Some(_), _) => Decision::Resolve(Permit {
            association: AssociationState::Existing,
            authenticated: true,
        }),
        (None, _) if !identity.on_mno_network => Decision::Refuse(Refusal::RetryOnMnoNetwork),
        (None, None) => Decision::Refuse(Refusal::SubscriberUnknown),
        (None, Some((subscriber, source))) => Decision::Associate {
            subscriber: *subscriber,
            source: *source,
            rebind: false,
        },
    }
}

/// Where a code is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Here: the target.
    Local(Arc<str>),
    /// At the peer CMP that owns its prefix (the caller forwards it).
    Peer,
}

/// After authentication: the routing prefix (`UNKNOWN_PREFIX`, or a peer
/// CMP's) and the code (`CODE_NOT_FOUND`). Needs a [`Permit`]: an
/// unauthenticated request cannot learn whether a code exists, and is never
/// forwarded to a peer, whatever the mode: a request that enforce mode
/// would refuse finds no peer (`UNKNOWN_PREFIX`).
/// `lookup` is the code store (the index, for the transports).
pub fn resolve(
    policy: &Policy,
    permit: &Permit,
    code: &IndirectCode,
    lookup: impl FnOnce(&IndirectCode) -> Option<Arc<str>>,
) -> Result<Resolution, Refusal> {
    let owned_by =
        |prefixes: &[RoutingPrefix]| prefixes.iter().any(|p| p.as_str() == code.prefix());
    if owned_by(&policy.routing_prefixes) {
        return lookup(code)
            .map(Resolution::Local)
            .ok_or(Refusal::CodeNotFound);
    }
    let peer = policy.peer_registry || owned_by(&policy.federated_prefixes);
    match peer && permit.authenticated {
        true => Ok(Resolution::Peer),
        false => Err(Refusal::UnknownPrefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: AuthMode, on_mismatch: MismatchPolicy) -> Policy {
        Policy {
            mode,
            on_mismatch,
            routing_prefixes: vec![RoutingPrefix::parse("2001000001").unwrap()],
            federated_prefixes: vec![],
            peer_registry: false,
        }
    }

    fn assoc(sub: u8) -> Option<Association> {
        Some(Association {
            subscriber: SubscriberRef([sub; 32]),
            seq: 1,
        })
    }

    fn on_mno(sub: Option<u8>) -> Identity {
        Identity {
            client_addr: "127.1.0.1".parse().unwrap(),
            on_mno_network: true,
            subscriber: sub.map(|s| (SubscriberRef([s; 32]), IdentitySource::SessionBinding)),
            spoof_attempt: false,
        }
    }

    fn wifi() -> Identity {
        Identity {
            client_addr: "127.2.0.1".parse().unwrap(),
            on_mno_network: false,
            subscriber: None,
            spoof_attempt: false,
        }
    }

    fn id(text: &str) -> Option<Result<ClientIdRef<'_>, ClientIdError>> {
        Some(ClientIdRef::parse(text))
    }

    const ENFORCE: AuthMode = AuthMode::Enforce;
    const REJECT: MismatchPolicy = MismatchPolicy::Reject;

    #[test]
    fn every_authentication_row() {
        let p = policy(ENFORCE, REJECT);
        let refuse = |r| Decision::Refuse(r);
        assert_eq!(
            decide(&p, None, None, &on_mno(Some(1))),
            refuse(Refusal::ClientIdRequired)
        );
        assert!(matches!(
            decide(&p, id("bad id"), None, &on_mno(Some(1))),
            Decision::Refuse(Refusal::InvalidClientId(_))
        ));
        assert_eq!(
            decide(&p, id("c"), None, &wifi()),
            refuse(Refusal::RetryOnMnoNetwork)
        );
        assert_eq!(
            decide(&p, id("c"), None, &on_mno(None)),
            refuse(Refusal::SubscriberUnknown)
        );
        assert_eq!(
            decide(&p, id("c"), assoc(1), &on_mno(Some(2))),
            refuse(Refusal::AssociationMismatch)
        );
        assert_eq!(
            decide(&p, id("c"), None, &on_mno(Some(1))),
            Decision::Associate {
                subscriber: SubscriberRef([1; 32]),
                source: IdentitySource::SessionBinding,
                rebind: false
            }
        );
        let existing = Decision::Resolve(Permit {
            association: AssociationState::Existing,
            authenticated: true,
        });
        assert_eq!(decide(&p, id("c"), assoc(1), &on_mno(Some(1))), existing);
        assert_eq!(decide(&p, id("c"), assoc(1), &wifi()), existing);
        assert_eq!(decide(&p, id("c"), assoc(1), &on_mno(None)), existing);
    }

    #[test]
    fn rebind_policy_moves_on_mismatch() {
        let p = policy(ENFORCE, MismatchPolicy::Rebind);
        assert_eq!(
            decide(&p, id("c"), assoc(1), &on_mno(Some(2))),
            Decision::Associate {
                subscriber: SubscriberRef([2; 32]),
                source: IdentitySource::SessionBinding,
                rebind: true
            }
        );
    }

    #[test]
    fn monitor_resolves_what_enforce_refuses_but_not_parse_errors() {
        let p = policy(AuthMode::Monitor, REJECT);
        assert_eq!(
            decide(&p, None, None, &wifi()),
            Decision::Monitored {
                would: Refusal::ClientIdRequired,
                permit: Permit {
                    association: AssociationState::None,
                    authenticated: false,
                }
            }
        );
        assert_eq!(
            decide(&p, id("c"), None, &wifi()),
            Decision::Monitored {
                would: Refusal::RetryOnMnoNetwork,
                permit: Permit {
                    association: AssociationState::None,
                    authenticated: false,
                }
            }
        );
        assert!(matches!(
            decide(&p, id("c"), None, &on_mno(Some(1))),
            Decision::Associate { .. }
        ));
    }

    #[test]
    fn off_never_authenticates() {
        let p = policy(AuthMode::Off, REJECT);
        assert_eq!(
            decide(&p, None, None, &wifi()),
            Decision::Resolve(Permit {
                association: AssociationState::None,
                authenticated: false,
            })
        );
        assert_eq!(
            decide(&p, id("c"), assoc(1), &wifi()),
            Decision::Resolve(Permit {
                association: AssociationState::None,
                authenticated: true,
            })
        );
    }

    #[test]
    fn resolve_checks_prefix_then_code() {
        let p = policy(ENFORCE, REJECT);
        let permit = decide(&p, id("a"), assoc(1), &on_mno(Some(1)));
        let Decision::Resolve(permit) = permit else {
            panic!("{permit:?}")
        };
        let store = |code: &IndirectCode| {
            (code.as_str() == "2001000001abc").then(|| Arc::from("https://example.org/"))
        };
        let code = |t| IndirectCode::parse(t).unwrap();
        assert_eq!(
            resolve(&p, &permit, &code("2001000001abc"), store),
            Ok(Resolution::Local("https://example.org/".into()))
        );
        assert_eq!(
            resolve(&p, &permit, &code("2001000001abd"), store),
            Err(Refusal::CodeNotFound)
        );
        assert_eq!(
            resolve(&p, &permit, &code("2001000002abc"), store),
            Err(Refusal::UnknownPrefix)
        );
        let federated = Policy {
            federated_prefixes: vec![RoutingPrefix::parse("2001000002").unwrap()],
            ..p
        };
        assert_eq!(
            resolve(&federated, &permit, &code("2001000002abc"), store),
            Ok(Resolution::Peer)
        );
        assert_eq!(
            resolve(&federated, &permit, &code("2001000003abc"), store),
            Err(Refusal::UnknownPrefix)
        );
        let registry = Policy {
            peer_registry: true,
            ..federated
        };
        assert_eq!(
            resolve(&registry, &permit, &code("2001000003abc"), store),
            Ok(Resolution::Peer)
        );
    }

    #[test]
    fn only_a_durable_association_earns_a_permit() {
        let created = Associated::Created {
            seq: 3,
            superseded: vec![],
        };
        assert_eq!(
            permit_after(&created).map(|p| p.association()),
            Some(AssociationState::Created)
        );
        assert_eq!(permit_after(&Associated::Existing(assoc(2).unwrap())), None);
    }

    fn any_identity() -> impl proptest::strategy::Strategy<Value = Identity> {
        use proptest::prelude::*;
        (any::<bool>(), proptest::option::of(1u8..4), any::<bool>()).prop_map(
            |(on_mno_network, sub, spoof_attempt)| Identity {
                client_addr: "127.1.0.1".parse().unwrap(),
                on_mno_network,
                subscriber: sub
                    .filter(|_| on_mno_network)
                    .map(|s| (SubscriberRef([s; 32]), IdentitySource::SessionBinding)),
                spoof_attempt,
            },
        )
    }

    proptest::proptest! {
        /// Whatever the mode, a request reaches a peer CMP (or the
        /// registry) only if enforce mode would have let it through: monitor
        /// and off modes never amplify what enforce would refuse.
        #[test]
        fn no_mode_forwards_what_enforce_refuses(
            mode in proptest::prop_oneof![
                proptest::strategy::Just(AuthMode::Enforce),
                proptest::strategy::Just(AuthMode::Monitor),
                proptest::strategy::Just(AuthMode::Off)
            ],
            rebind in proptest::bool::ANY,
            clientid in proptest::option::of("[a-z ]{1,3}"),
            associated_to in proptest::option::of(1u8..4),
            identity in any_identity(),
            registry in proptest::bool::ANY,
        ) {
            let on_mismatch = match rebind {
                true => MismatchPolicy::Rebind,
                false => REJECT,
            };
            let p = Policy {
                federated_prefixes: vec![RoutingPrefix::parse("2001000002").unwrap()],
                peer_registry: registry,
                ..policy(mode, on_mismatch)
            };
            let enforce = Policy { mode: ENFORCE, ..p.clone() };
            let clientid = clientid.as_deref().map(ClientIdRef::parse);
            let association = associated_to.and_then(|s| assoc(s).filter(|_| matches!(clientid, Some(Ok(_)))));
            let enforced = decide(&enforce, clientid.clone(), association, &identity);
            let permit = match decide(&p, clientid, association, &identity) {
                Decision::Resolve(permit) | Decision::Monitored { permit, .. } => permit,
                Decision::Associate { .. } => {
                    let associates = matches!(enforced, Decision::Associate { .. });
                    proptest::prop_assert!(associates, "enforce answers {:?}", enforced);
                    continue_with_created()
                }
                Decision::Refuse(refusal) => {
                    proptest::prop_assert_eq!(Decision::Refuse(refusal), enforced);
                    return Ok(());
                }
            };
            let foreign = IndirectCode::parse("2001000002abc").unwrap();
            let forwarded = resolve(&p, &permit, &foreign, |_| None) == Ok(Resolution::Peer);
            let enforce_lets_through = !matches!(enforced, Decision::Refuse(_));
            proptest::prop_assert!(!forwarded || enforce_lets_through, "{:?} forwarded what enforce answers {:?}", mode, enforced);
            proptest::prop_assert_eq!(forwarded, enforce_lets_through);
        }
    }

    /// The permit a durable creation earns (what the transport gets after
    /// an `Associate`).
    fn continue_with_created() -> Permit {
        permit_after(&Associated::Created {
            seq: 1,
            superseded: vec![],
        })
        .unwrap()
    }
}
