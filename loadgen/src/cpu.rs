//! CPU time of a process, from `/proc/PID/stat` (Linux): the load generator
//! reports its own, to show it is not the bottleneck, and optionally the
//! server's, to compare requests per core.

use std::time::Duration;

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU used so far by process `pid` (this process if `None`); `None` where
/// `/proc` is not there.
pub fn times(pid: Option<u32>) -> Option<CpuTimes> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// Fields 14 and 15 (utime, stime) of `/proc/PID/stat`. The command name in
/// field 2 may hold spaces and parentheses, so count from the last `)`.
fn parse_stat(text: &str) -> Option<CpuTimes> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Field 3 (state) is the first after the name; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SEC);
    Some(CpuTimes {
        user: ticks(utime),
        system: ticks(stime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        let t = parse_stat(line).unwrap();
        assert_eq!(t.user, Duration::from_millis(2500));
        assert_eq!(t.system, Duration::from_millis(750));
    }

    #[test]
    fn reads_its_own() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(times(None).is_some());
        }
    }
}
