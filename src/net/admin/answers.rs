//! What the admin API answers, as types. The handlers ([`super`])
//! serialize these, and the API document (`crate::net::openapi`) is
//! generated from the same definitions: a field a handler sends is a field
//! the document names, and a field the document requires is one the
//! handler cannot leave out.

use serde::Serialize;
use utoipa::ToSchema;

use crate::codes::RuleBody;
use crate::core::model::ScanPair;
use crate::net::error::ErrorBody;

/// A code: its target, and its rules when it has some.
#[derive(Debug, Serialize, ToSchema)]
pub struct Code {
    pub code: String,
    pub target: String,
    /// The sequence of the event that registered it.
    pub seq: u64,
    /// Resolution rules, first match wins; absent when the code has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CodeRemoved {
    pub code: String,
    pub removed: bool,
}

/// Resolutions of a code, by protocol and by kind: written to the log and
/// counted since.
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeStats {
    pub code: String,
    pub resolutions: u64,
    pub http1: ScanPair,
    pub http2: ScanPair,
    pub http3: ScanPair,
    /// Per rule, in the code's order (a code with rules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub rules: Option<Vec<RuleScans>>,
}

/// What one rule sent where.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleScans {
    pub target: String,
    pub resolutions: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Association {
    pub clientid: String,
    /// The keyed hash (64 hex), never an MSISDN.
    pub subscriber: String,
    #[schema(format = DateTime)]
    pub since: String,
    /// The sequence of the event that made it.
    pub seq: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    pub clientid: String,
    pub revoked: bool,
}

/// A subscriber erased: what went.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erasure {
    /// The keyed reference (64 hex).
    pub subscriber: String,
    pub erased: bool,
    pub sessions_unbound: usize,
    pub associations_revoked: usize,
    pub records_rewritten: u64,
}

/// Retention done: the cutoff, the records rewritten and those looked at.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retention {
    #[schema(format = DateTime)]
    pub ended_before: String,
    pub records_rewritten: u64,
    pub records_scanned: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Subscriber {
    /// The keyed reference (64 hex), as the log and the audit name it.
    pub subscriber: String,
    /// Its associated clientids, sorted.
    pub clientids: Vec<String>,
}

/// A binding made.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBound {
    pub ip: String,
    /// The keyed reference (64 hex).
    pub subscriber: String,
    #[schema(format = DateTime)]
    pub expires: String,
}

/// A binding, and who made it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The address or prefix asked for.
    pub ip: String,
    /// The binding's own address or prefix.
    pub network: String,
    /// The keyed reference (64 hex).
    pub subscriber: String,
    #[schema(format = DateTime)]
    pub expires: String,
    #[schema(inline)]
    pub source: SessionSource,
    /// The RADIUS client (NAS) that sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub nas: Option<String>,
    /// Its Acct-Session-Id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub acct_session_id: Option<String>,
}

/// Who made a binding: `admin` (this API) or `radius` (accounting).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionSource {
    Admin,
    Radius,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRemoved {
    pub ip: String,
    pub removed: bool,
}

/// A page of the audit: newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage<'a> {
    pub events: Vec<crate::sre::ExportLine<'a>>,
    /// Where the next page starts (`before=`); `null` at the end.
    #[schema(required = true)]
    pub next: Option<u64>,
}

/// What a reload read again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    /// `certificate`, `federation` (with `[federation]`), `rules`, `limits`.
    pub reloaded: Vec<&'static str>,
    /// When the certificate now served expires.
    #[schema(format = DateTime, required = true)]
    pub certificate_expires: Option<String>,
}

/// `/readyz` as JSON, for a cluster node cut from JetStream: it still
/// serves every association it has (so it stays in rotation).
#[derive(Debug, Serialize, ToSchema)]
pub struct Degraded<'a> {
    pub ready: bool,
    pub degraded: bool,
    pub reason: &'a str,
}

/// `/readyz` for a node not to send clients to: the error, and the fields
/// every JSON `/readyz` answer has.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady<'a> {
    #[serde(flatten)]
    pub error: ErrorBody<'a>,
    pub ready: bool,
    pub reason: &'a str,
}

/// An import a batch of which the store did not write: the error, and the
/// report of what was written before it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportFailed<'a> {
    #[serde(flatten)]
    pub error: ErrorBody<'a>,
    pub report: &'a crate::codes::Report,
}

/// The node at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    /// As /readyz: false once the event log refuses writes or the cluster
    /// follower has stopped.
    pub ready: bool,
    pub log: LogStatus,
    pub associations: usize,
    pub subscribers: usize,
    pub codes: usize,
    /// Session bindings held (admin API and RADIUS).
    pub sessions: usize,
    pub open_connections: usize,
    /// `null` outside cluster mode.
    #[schema(required = true)]
    pub cluster: Option<ClusterStatus>,
    /// `null` without `[radius]`.
    #[schema(required = true)]
    pub radius: Option<RadiusStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogStatus {
    pub last_seq: u64,
    pub poisoned: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    pub connected: bool,
    /// Why the follower stopped, if it has.
    #[schema(required = true)]
    pub stopped: Option<String>,
    pub applied: u64,
    pub conflicts: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RadiusStatus {
    pub listen: String,
    #[schema(format = DateTime, required = true)]
    pub last_packet: Option<String>,
}
