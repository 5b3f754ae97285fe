//! The files the load generator reads and writes (the CA, the admin token,
//! setups, JSON reports): whole-file reads and pretty JSON writes, each
//! error naming its file. What a file means is its reader's business.

use std::path::Path;

use serde::Serialize;

use crate::error::Error;

pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| io_error(path, source))
}

pub fn read_to_string(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| io_error(path, source))
}

/// `value` as indented JSON with a final newline.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).expect("loadgen data serialises to JSON");
    std::fs::write(path, text + "\n").map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}
