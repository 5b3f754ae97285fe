//! Who may do what on the admin API (DESIGN §6b): the roles, the scoped
//! tokens that carry them, and the one table of the role each admin route
//! needs ([`required_role`]). The admin listener's middleware asks
//! [`Tokens::authenticate`] who is calling and this table what the call
//! needs; nothing else decides access.
//!
//! Scoped tokens live in `data_dir/tokens.json`, hashed (SHA-256 of a
//! 256-bit random token: nothing in the file lets anyone call the API).
//! `homecmp token create|list|revoke` edits the file under a lock, replacing
//! it whole; the server reads it again whenever it changed, so a revocation
//! holds from the next request. The data dir's `admin.token` (or
//! `$HOMECMP_ADMIN_TOKEN`) keeps working as a token with every role, named
//! [`ADMIN_TOKEN_NAME`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use http::Method;
use serde::{Deserialize, Serialize};

/// The file of scoped tokens, in the data dir.
pub const TOKENS_FILE: &str = "tokens.json";
/// Held while the CLI edits [`TOKENS_FILE`].
pub const TOKENS_LOCK: &str = "tokens.lock";
/// The actor name of the data dir's all-roles admin token.
pub const ADMIN_TOKEN_NAME: &str = "admin-token";
/// What every scoped token starts with: a token found in a log or a
/// config is recognisable as one.
pub const TOKEN_PREFIX: &str = "hcmp_";

/// A permission on the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    CodesRead,
    CodesWrite,
    SubscribersRead,
    SubscribersErase,
    SessionsRead,
    SessionsWrite,
    AuditRead,
    /// Reload, backup, metrics.
    Ops,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::CodesRead,
        Role::CodesWrite,
        Role::SubscribersRead,
        Role::SubscribersErase,
        Role::SessionsRead,
        Role::SessionsWrite,
        Role::AuditRead,
        Role::Ops,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::CodesRead => "codes:read",
            Role::CodesWrite => "codes:write",
            Role::SubscribersRead => "subscribers:read",
            Role::SubscribersErase => "subscribers:erase",
            Role::SessionsRead => "sessions:read",
            Role::SessionsWrite => "sessions:write",
            Role::AuditRead => "audit:read",
            Role::Ops => "ops",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(name: &str) -> Result<Role, String> {
        Role::parse(name).ok_or_else(|| {
            let known: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown role {name:?} (roles: {})", known.join(", "))
        })
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u16);

impl Roles {
    pub fn all() -> Roles {
        Role::ALL.into_iter().collect()
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(roles: I) -> Roles {
        Roles(roles.into_iter().fold(0, |bits, r| bits | r.bit()))
    }
}

/// Who is calling: the actor an admin change is recorded under, and what
/// it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Roles,
}

/// The admin routes answered without a token: the probes, and what holds
/// no data (the API's description, the console's page and files; the
/// console asks for a token before it asks for data).
pub const OPEN_ROUTES: [&str; 5] = [
    "/healthz",
    "/readyz",
    "/admin/v1/openapi.json",
    "/admin/console",
    "/admin/console/{asset}",
];

/// The role a call to the admin API needs, by method and route template
/// (axum's matched path); `None`: no role grants it (refused). The one
/// table of who may do what; `tests/access.rs` walks every route of the
/// router through it.
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    let read = method == Method::GET || method == Method::HEAD;
    // A flat table: one line per route.
    let role = match route {
        "/admin/v1/codes/{code}" | "/admin/v1/codes/{code}/stats" | "/admin/v1/codes:export"
            if read =>
        {
            Role::CodesRead
        }
        "/admin/v1/codes/{code}" | "/admin/v1/codes:import" => Role::CodesWrite,
        "/admin/v1/associations/{clientid}" | "/admin/v1/subscribers/{msisdn}" if read => {
            Role::SubscribersRead
        }
        "/admin/v1/associations/{clientid}"
        | "/admin/v1/subscribers/{msisdn}"
        | "/admin/v1/retention" => Role::SubscribersErase,
        "/admin/v1/sessions/{*ip}" if read => Role::SessionsRead,
        "/admin/v1/sessions/{*ip}" => Role::SessionsWrite,
        "/admin/v1/audit" | "/admin/v1/events" => Role::AuditRead,
        "/admin/v1/reload" | "/admin/v1/status" | "/metrics" => Role::Ops,
        _ => return None,
    };
    Some(role)
}

/// A token name: 1 to 64 of `A-Z a-z 0-9 . _ @ -` (an e-mail address or a
/// team's name), and not the admin token's.
pub fn check_name(name: &str) -> Result<(), TokensError> {
    let fits = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    match fits && name != ADMIN_TOKEN_NAME {
        true => Ok(()),
        false => Err(TokensError::BadName(name.to_owned())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("token name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -, and not \"{ADMIN_TOKEN_NAME}\"")]
    BadName(String),
    #[error("a token named {0:?} exists already (revoke it first)")]
    Exists(String),
    #[error("a token needs at least one role (--role)")]
    NoRoles,
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: not a tokens file: {error}")]
    Malformed { path: PathBuf, error: String },
}

/// One scoped token as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub name: String,
    pub roles: Vec<Role>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// What identifies one version of the file: a rewrite (a new inode by
/// rename) or an edit in place changes it.
type Stamp = (SystemTime, u64, u64);

fn stamp(meta: &fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    (modified, meta.len(), inode)
}

/// The server's view of the tokens: the all-roles admin token and the
/// scoped tokens of the file, read again when it changes.
#[derive(Debug)]
pub struct Tokens {
    admin: [u8; 32],
    path: PathBuf,
    /// The file as last read (`None`: not read yet).
    cache: Mutex<Option<(Option<Stamp>, Vec<TokenEntry>)>>,
}

impl Tokens {
    pub fn new(admin_token: &str, data_dir: &Path) -> Tokens {
        Tokens {
            admin: sha256(admin_token.as_bytes()),
            path: data_dir.join(TOKENS_FILE),
            cache: Mutex::new(None),
        }
    }

    /// Who `token` belongs to, or `None` (unknown, revoked, or the file
    /// cannot be read: a file that does not parse grants nothing, and says
    /// so in the server log).
    pub fn authenticate(&self, token: &[u8]) -> Option<Principal> {
        let hash = sha256(token);
        if equal(&hash, &self.admin) {
            return Some(Principal {
                name: ADMIN_TOKEN_NAME.into(),
                roles: Roles::all(),
            });
        }
        let hex = hex(&hash);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let current = fs::metadata(&self.path).ok().map(|m| stamp(&m));
        let fresh = matches!(&*cache, Some((seen, _)) if *seen == current);
        if !fresh {
            let entries = match read_file(&self.path) {
                Ok(file) => file.tokens,
                Err(e) => {
                    tracing::error!(error = %e, "scoped admin tokens refused until the file is fixed");
                    Vec::new()
                }
            };
            *cache = Some((current, entries));
        }
        let (_, entries) = cache.as_ref().expect("filled above");
        entries
            .iter()
            .find(|e| equal(e.sha256.as_bytes(), hex.as_bytes()))
            .map(|e| Principal {
                name: e.name.clone(),
                roles: e.roles.iter().copied().collect(),
            })
    }
}

/// Makes a token named `name` with `roles` in `data_dir`'s file: the token
/// itself is returned, once; only its hash is kept.
pub fn create(data_dir: &Path, name: &str, roles: &[Role]) -> Result<String, TokensError> {
    check_name(name)?;
    if roles.is_empty() {
        return Err(TokensError::NoRoles);
    }
    let token = format!("{TOKEN_PREFIX}{}", crate::deploy::random_hex(32));
    edit(data_dir, |file| {
        if file.tokens.iter().any(|e| e.name == name) {
            return Err(TokensError::Exists(name.to_owned()));
        }
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        file.tokens.push(TokenEntry {
            name: name.to_owned(),
            roles,
            sha256: hex(&sha256(token.as_bytes())),
            created: crate::clock::rfc3339(crate::clock::now_ms()),
        });
        Ok(())
    })?;
    Ok(token)
}

/// Removes the token named `name`; `false` if there was none.
pub fn revoke(data_dir: &Path, name: &str) -> Result<bool, TokensError> {
    let mut found = false;
    edit(data_dir, |file| {
        let before = file.tokens.len();
        file.tokens.retain(|e| e.name != name);
        found = file.tokens.len() < before;
        Ok(())
    })?;
    Ok(found)
}

/// The scoped tokens of `data_dir` (names, roles, creation; the hashes too).
pub fn list(data_dir: &Path) -> Result<Vec<TokenEntry>, TokensError> {
    Ok(read_file(&data_dir.join(TOKENS_FILE))?.tokens)
}

/// Reads, changes and replaces the file whole (a new file renamed over
/// it, so the server never reads half of one), under an exclusive lock
/// so that two edits never lose each other's change.
fn edit(
    data_dir: &Path,
    change: impl FnOnce(&mut TokensFile) -> Result<(), TokensError>,
) -> Result<(), TokensError> {
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |error| TokensError::Io { path, error }
    };
    let lock_path = data_dir.join(TOKENS_LOCK);
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_at(&lock_path))?;
    lock.lock().map_err(io_at(&lock_path))?;
    let path = data_dir.join(TOKENS_FILE);
    let mut file = read_file(&path)?;
    change(&mut file)?;
    let text = serde_json::to_string_pretty(&file).expect("serialisable") + "\n";
    let temp = data_dir.join(format!("{TOKENS_FILE}.new"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&temp).map_err(io_at(&temp))?;
    out.write_all(text.as_bytes()).map_err(io_at(&temp))?;
    out.sync_all().map_err(io_at(&temp))?;
    fs::rename(&temp, &path).map_err(io_at(&path))?;
    Ok(())
}

/// The file, or an empty one if there is none yet.
fn read_file(path: &Path) -> Result<TokensFile, TokensError> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| TokensError::Malformed {
            path: path.to_owned(),
            error: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TokensFile::default()),
        Err(error) => Err(TokensError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn role_names_read_back() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        assert!(
            "codes:delete"
                .parse::<Role>()
                .unwrap_err()
                .contains("codes:read")
        );
    }

    #[test]
    fn created_tokens_authenticate_with_their_roles_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let admin = "a".repeat(64);
        let tokens = Tokens::new(&admin, dir.path());
        assert_eq!(
            tokens.authenticate(admin.as_bytes()).unwrap().roles,
            Roles::all()
        );
        let marketing = create(
            dir.path(),
            "marketing",
            &[Role::CodesWrite, Role::CodesRead],
        )
        .unwrap();
        assert!(marketing.starts_with(TOKEN_PREFIX));
        let who = tokens.authenticate(marketing.as_bytes()).unwrap();
        assert_eq!(who.name, "marketing");
        assert_eq!(
            who.roles.iter().collect::<Vec<_>>(),
            [Role::CodesRead, Role::CodesWrite]
        );
        assert!(matches!(
            create(dir.path(), "marketing", &[Role::Ops]),
            Err(TokensError::Exists(_))
        ));
        let text = fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(&marketing), "only the hash is kept");
        assert!(revoke(dir.path(), "marketing").unwrap());
        assert_eq!(tokens.authenticate(marketing.as_bytes()), None);
        assert!(!revoke(dir.path(), "marketing").unwrap());
    }

    #[test]
    fn a_file_that_does_not_parse_grants_nothing_but_the_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(&"a".repeat(64), dir.path());
        let ops = create(dir.path(), "ops", &[Role::Ops]).unwrap();
        assert!(tokens.authenticate(ops.as_bytes()).is_some());
        fs::write(dir.path().join(TOKENS_FILE), "{not json").unwrap();
        assert_eq!(tokens.authenticate(ops.as_bytes()), None);
        assert!(tokens.authenticate("a".repeat(64).as_bytes()).is_some());
        assert!(matches!(
            list(dir.path()),
            Err(TokensError::Malformed { .. })
        ));
    }

    /// Every route the admin router declares (read from its source) is in
    /// the table: a new route is not left to "any valid token" (one
    /// missing from the table is refused to everyone).
    #[test]
    fn every_admin_route_needs_a_role() {
        let source = include_str!("net/admin.rs");
        let routes: Vec<&str> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .filter(|route| !OPEN_ROUTES.contains(route))
            .collect();
        assert!(routes.len() >= 9, "{routes:?}");
        for route in routes {
            let methods = [Method::GET, Method::PUT, Method::POST, Method::DELETE];
            let granted = methods.iter().any(|m| required_role(m, route).is_some());
            assert!(granted, "{route} is in no line of the table");
        }
        assert_eq!(required_role(&Method::GET, "/admin/v1/elsewhere"), None);
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a b", ADMIN_TOKEN_NAME, &"x".repeat(65), "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("noc@mno.example").unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any token that was not created (a guess, a prefix of a real one,
        /// the hash itself) authenticates as no one.
        #[test]
        fn only_created_tokens_authenticate(guess in "[ -~]{0,80}") {
            let dir = tempfile::tempdir().unwrap();
            let tokens = Tokens::new(&"a".repeat(64), dir.path());
            let real = create(dir.path(), "t", &[Role::Ops]).unwrap();
            let hash = list(dir.path()).unwrap()[0].sha256.clone();
            for wrong in [guess.as_str(), &real[..real.len() - 1], &hash] {
                prop_assume!(wrong != real && wrong != "a".repeat(64));
                prop_assert_eq!(tokens.authenticate(wrong.as_bytes()), None);
            }
        }
    }
}
