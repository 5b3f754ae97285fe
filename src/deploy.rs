//! Per-deployment files in the data dir, made on first start: the subscriber
//! key, the admin token, and (when no certificate is configured) a local CA
//! with a server certificate. Each is written once with mode 0600 and read
//! back on later starts, so restarts keep identities and trust.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Environment variable that overrides the admin token file.
pub const ADMIN_TOKEN_ENV: &str = "HOMECMP_ADMIN_TOKEN";
pub const SUBSCRIBER_KEY_FILE: &str = "subscriber.key";
pub const TLS_DIR: &str = "tls";

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot generate a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DeployError + '_ {
    move |source| DeployError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to a new file readable by the owner only; fails if the
/// file exists (two starts racing must not overwrite each other's secret).
fn create_private(path: &Path, contents: &str) -> Result<(), DeployError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Reads the hex secret at `path`, creating it with `bytes` random bytes if
/// it does not exist yet.
fn read_or_create_hex(path: &Path, bytes: usize) -> Result<String, DeployError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            create_private(path, &random_hex(bytes))?;
            Ok(fs::read_to_string(path)
                .map_err(io_err(path))?
                .trim()
                .to_owned())
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The 32-byte secret keying subscriber refs: `data_dir/subscriber.key`.
pub fn subscriber_secret(data_dir: &Path) -> Result<[u8; 32], DeployError> {
    let path = data_dir.join(SUBSCRIBER_KEY_FILE);
    let hex = read_or_create_hex(&path, 32)?;
    crate::wire::SubscriberRef::from_hex(&hex)
        .map(|r| r.0)
        .ok_or_else(|| DeployError::Invalid {
            path,
            reason: "expected 64 hex digits".into(),
        })
}

/// The admin bearer token: `$HOMECMP_ADMIN_TOKEN` if set, else the file.
pub fn admin_token(path: &Path) -> Result<String, DeployError> {
    let (token, from) = match std::env::var(ADMIN_TOKEN_ENV) {
        Ok(token) if !token.is_empty() => (token, PathBuf::from(format!("${ADMIN_TOKEN_ENV}"))),
        _ => (read_or_create_hex(path, 32)?, path.to_owned()),
    };
    check_admin_token(&token).map_err(|reason| DeployError::Invalid { path: from, reason })?;
    Ok(token)
}

/// Shortest admin token accepted: 32 characters (the generated one is 64
/// hex digits, 256 bits).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// A token is at least [`MIN_ADMIN_TOKEN_LEN`] visible ASCII characters: it
/// travels in a header, and a short one can be guessed.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "admin token shorter than {MIN_ADMIN_TOKEN_LEN} characters"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("admin token must be visible ASCII characters without spaces".into());
    }
    Ok(())
}

/// PEM paths of the generated local CA and server certificate.
#[derive(Debug, Clone)]
pub struct GeneratedTls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A local CA and a server certificate for `localhost`, `127.0.0.1`, `::1`
/// and `extra_names`, in `data_dir/tls/`; generated once. Clients trust
/// `ca.pem` (`curl --cacert`).
pub fn self_signed_tls(
    data_dir: &Path,
    extra_names: &[String],
) -> Result<GeneratedTls, DeployError> {
    let dir = data_dir.join(TLS_DIR);
    let tls = GeneratedTls {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if tls.cert.exists() && tls.key.exists() {
        return Ok(tls);
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "homecmp local CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    names.dedup();
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "homecmp");
    let cert = params.signed_by(&key, &ca)?;
    fs::write(&tls.ca_cert, ca.pem()).map_err(io_err(&tls.ca_cert))?;
    fs::write(&tls.cert, cert.pem()).map_err(io_err(&tls.cert))?;
    let _ = fs::remove_file(&tls.key);
    create_private(&tls.key, &key.serialize_pem())?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = subscriber_secret(dir.path()).unwrap();
        assert_eq!(subscriber_secret(dir.path()).unwrap(), first);
        let token_path = dir.path().join("admin.token");
        let token = admin_token(&token_path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(admin_token(&token_path).unwrap(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&token_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn short_or_spaced_admin_tokens_are_refused() {
        assert!(check_admin_token(&"a".repeat(31)).is_err());
        assert!(check_admin_token(&format!("{} x", "a".repeat(32))).is_err());
        assert!(check_admin_token(&"a".repeat(32)).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        fs::write(&path, "short-token-of-24-chars!").unwrap();
        assert!(matches!(
            admin_token(&path),
            Err(DeployError::Invalid { .. })
        ));
    }

    #[test]
    fn broken_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SUBSCRIBER_KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            subscriber_secret(dir.path()),
            Err(DeployError::Invalid { .. })
        ));
    }
}
