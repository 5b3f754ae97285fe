//! The one server configuration every test starts from: the integration
//! tests here, the loadgen's test against a real server and the decision
//! bench include this file (`#[path]`), so a new required key is added once.

use std::path::Path;

/// The routing prefix every test server owns.
pub const PREFIX: &str = "2001000001";

/// The TOML every test server starts from: `server_keys` go into
/// `[server]`, `extra` (whole sections, `[admin]` among them if it likes)
/// is appended. Both listeners are on port 0 unless `server_keys` says.
pub fn config_text(data_dir: &Path, server_keys: &str, extra: &str) -> String {
    let listen = match server_keys.contains("listen") {
        true => "",
        false => "listen = \"127.0.0.1:0\"",
    };
    let prefixes = match server_keys.contains("routing_prefixes") {
        true => String::new(),
        false => format!("routing_prefixes = [\"{PREFIX}\"]"),
    };
    let admin_listen = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let extra = match extra.contains("[admin]\n") {
        true => extra.replacen("[admin]\n", admin_listen, 1),
        false => format!("{admin_listen}{extra}"),
    };
    format!(
        r#"
[server]
data_dir = "{}"
{listen}
{prefixes}
{server_keys}
{extra}
"#,
        data_dir.display()
    )
}
