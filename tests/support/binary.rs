//! The `homecmp` binary started as an operator starts it, ready line read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// What the first stdout line of `homecmp serve` says.
pub struct Ready {
    pub public: String,
    pub admin: String,
    pub token_file: String,
    pub ca: String,
}

/// Spawns `command` (`homecmp serve ...`, stderr already set) with stdout
/// piped, and waits for its ready line.
pub fn spawn_ready(mut command: Command) -> (Child, Ready) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("homecmp ready "),
        "unexpected first line {line:?}"
    );
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let ready = Ready {
        public: field("public"),
        admin: field("admin"),
        token_file: field("token_file"),
        ca: field("ca"),
    };
    (child, ready)
}
