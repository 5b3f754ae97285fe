//! The setup file's data: what a setup made (codes, subscribers and their
//! clientids), saved to and loaded from JSON. Data only: the procedure that
//! makes a setup is `setup`, and what is built from one is `classes`.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::files;

/// Bumped when the file layout changes.
pub const FORMAT_VERSION: u32 = 1;

/// A setup, as saved: enough to run floods against the same server later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub version: u32,
    pub prefix: String,
    /// Registered codes, routing prefix included.
    pub codes: Vec<String>,
    pub subscribers: Vec<Subscriber>,
    /// The trusted gateway the associations were made through, if any.
    pub gateway: Option<IpAddr>,
    pub created_unix: u64,
}

/// One subscriber: its MNO address (session-bound), MSISDN, and clientids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscriber {
    pub ip: IpAddr,
    pub msisdn: String,
    pub clientids: Vec<String>,
}

impl Setup {
    pub fn clientid_count(&self) -> usize {
        self.subscribers.iter().map(|s| s.clientids.len()).sum()
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = files::read_to_string(path)?;
        let setup: Setup = serde_json::from_str(&text)
            .map_err(|e| Error::Setup(format!("{}: not a setup file: {e}", path.display())))?;
        if setup.version != FORMAT_VERSION {
            return Err(Error::Setup(format!(
                "{}: setup format {} (this loadgen reads {FORMAT_VERSION})",
                path.display(),
                setup.version
            )));
        }
        if setup.codes.is_empty() || setup.subscribers.iter().all(|s| s.clientids.is_empty()) {
            return Err(Error::Setup(format!(
                "{}: no codes or no clientids",
                path.display()
            )));
        }
        Ok(setup)
    }

    pub fn save(&self, path: &Path) -> Result<(), Error> {
        files::write_json(path, self)
    }
}
