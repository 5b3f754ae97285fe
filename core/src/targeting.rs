//! Resolution rules: one code, different answers. A code may hold an
//! ordered list of [`TargetRule`]s, each with conditions on the request
//! and a target; [`choose`] picks the first rule whose conditions all hold
//! (an empty condition holds for everyone), and the code's own target
//! answers when none does. Conditions: the languages the client accepts
//! (`Accept-Language`, a language with `q=0` refused), its platform
//! (`User-Agent`, else `Sec-CH-UA-Platform`), whether it is on the MNO's
//! network (as the identity decided it) and a time window.
//!
//! The rules are read only after the request passed authentication (the
//! code store is behind the [`crate::Permit`]), and the headers are parsed
//! only for a code that has rules: a plain code, or a refused request,
//! costs nothing more.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Most rules one code holds.
pub const MAX_RULES: usize = 16;
/// Most languages one rule names.
pub const MAX_LANGUAGES: usize = 16;
/// Most entries of an `Accept-Language` header looked at.
const MAX_ACCEPTED: usize = 32;

/// A device platform, as the request tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Ios,
    Android,
    Other,
}

/// Where the client is, as the identity decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// On the MNO's own network (an address of its pools, or a trusted
    /// gateway's).
    OnNet,
    OffNet,
}

/// One rule: conditions, all of which must hold, and the target then.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRule {
    /// Language ranges (`fr`, `pt-BR`): one of them accepted with q > 0.
    /// Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// From this time on (Unix milliseconds, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// Until this time (Unix milliseconds, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    pub target: String,
}

/// Why a list of rules is refused.
pub fn check_rules(rules: &[TargetRule]) -> Result<(), String> {
    if rules.len() > MAX_RULES {
        return Err(format!("at most {MAX_RULES} rules per code"));
    }
    let mut distinct: Vec<String> = rules
        .iter()
        .flat_map(|r| r.languages.iter().map(|l| l.to_ascii_lowercase()))
        .collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > MAX_CODE_LANGUAGES {
        return Err(format!(
            "at most {MAX_CODE_LANGUAGES} distinct languages per code"
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = |what: String| Err(format!("rule {i}: {what}"));
        if !crate::wire::valid_target(&rule.target) {
            return at(
                "target must be an http(s) URL of at most 2048 characters without spaces".into(),
            );
        }
        if rule.languages.len() > MAX_LANGUAGES {
            return at(format!("at most {MAX_LANGUAGES} languages"));
        }
        if let Some(bad) = rule.languages.iter().find(|l| !language_range(l)) {
            return at(format!("{bad:?} is not a language such as fr or pt-BR"));
        }
        if let (Some(from), Some(until)) = (rule.from_ms, rule.until_ms)
            && from >= until
        {
            return at("from must be before until".into());
        }
    }
    Ok(())
}

/// `fr`, `pt-BR`, `zh-Hant-TW`: 1 to 8 letters, then subtags of 1 to 8
/// letters or digits, at most 35 characters.
fn language_range(text: &str) -> bool {
    let mut parts = text.split('-');
    let primary = parts.next().unwrap_or_default();
    text.len() <= 35
        && (1..=8).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A code's rules, made ready to be matched fast: each condition as the
/// set of rules it lets through (bit `i`: rule `i`), so that [`choose`]
/// decides every rule at once with a few masks, and the distinct language
/// ranges of all its rules (lowercase), each with the rules that name it,
/// so that a request's `Accept-Language` is read once, in one pass,
/// without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    rules: Vec<TargetRule>,
    sets: RuleSets,
    /// Each rule's window (0 and `u64::MAX` when open); empty when no rule
    /// has one (then the clock is not read).
    windows: Vec<(u64, u64)>,
    ranges: Vec<String>,
    /// Each range's primary subtag, packed ([`primary`]): most ranges are
    /// told apart from a tag by one compare.
    primaries: Vec<u64>,
    /// Each range's rules: those that name it.
    range_rules: Vec<Rules>,
    /// The ranges' first two characters, a bit each ([`pair`]): most
    /// entries of a request's `Accept-Language` are passed over on this.
    pairs: [u64; PAIRS.div_ceil(64)],
}

/// A set of a code's rules, bit `i` for rule `i`.
type Rules = u16;
const _: () = assert!(MAX_RULES <= Rules::BITS as usize);

/// The rules each condition lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RuleSets {
    /// Those whose network condition holds for a client on the MNO's
    /// network, and off it.
    on_net: Rules,
    off_net: Rules,
    /// Those with a platform condition, and for each [`Platform`] those
    /// whose platform condition holds for it (or who have none).
    platform: Rules,
    by_platform: [Rules; 3],
    /// Those with a language condition.
    languages: Rules,
}

/// Most distinct language ranges the rules of one code name.
pub const MAX_CODE_LANGUAGES: usize = 64;

impl Compiled {
    /// `rules`, which [`check_rules`] accepted.
    pub fn new(rules: Vec<TargetRule>) -> Compiled {
        let mut ranges: Vec<String> = Vec::new();
        let mut range_rules: Vec<Rules> = Vec::new();
        let mut sets = RuleSets::default();
        for (i, rule) in rules.iter().enumerate().take(MAX_RULES) {
            let bit: Rules = 1 << i;
            if rule.network != Some(Network::OffNet) {
                sets.on_net |= bit;
            }
            if rule.network != Some(Network::OnNet) {
                sets.off_net |= bit;
            }
            if !rule.platforms.is_empty() {
                sets.platform |= bit;
            }
            for p in [Platform::Ios, Platform::Android, Platform::Other] {
                if rule.platforms.is_empty() || rule.platforms.contains(&p) {
                    sets.by_platform[p as usize] |= bit;
                }
            }
            if !rule.languages.is_empty() {
                sets.languages |= bit;
            }
            for language in &rule.languages {
                let language = language.to_ascii_lowercase();
                match ranges.iter().position(|r| *r == language) {
                    Some(at) => range_rules[at] |= bit,
                    None => {
                        ranges.push(language);
                        range_rules.push(bit);
                    }
                }
            }
        }
        let timed = rules
            .iter()
            .any(|r| r.from_ms.is_some() || r.until_ms.is_some());
        let windows = match timed {
            true => rules
                .iter()
                .take(MAX_RULES)
                .map(|r| (r.from_ms.unwrap_or(0), r.until_ms.unwrap_or(u64::MAX)))
                .collect(),
            false => Vec::new(),
        };
        let primaries = ranges.iter().map(|r| primary(r.as_bytes())).collect();
        let mut pairs = [0; PAIRS.div_ceil(64)];
        for p in ranges.iter().filter_map(|r| pair(r.as_bytes())) {
            pairs[p / 64] |= 1 << (p % 64);
        }
        Compiled {
            rules,
            sets,
            windows,
            ranges,
            primaries,
            range_rules,
            pairs,
        }
    }

    pub fn rules(&self) -> &[TargetRule] {
        &self.rules
    }
}

/// How many [`pair`]s there are.
const PAIRS: usize = 26 * 27;

/// A tag's first two characters, lowercase, as a number below [`PAIRS`]:
/// a letter, then a letter or anything else (a one-letter primary subtag
/// such as `i-klingon`'s); `None` when it does not start with a letter.
/// A range covers a tag only if the two have the same pair.
fn pair(tag: &[u8]) -> Option<usize> {
    let first = tag.first()?.to_ascii_lowercase();
    if !first.is_ascii_lowercase() {
        return None;
    }
    let second = match tag.get(1).map(u8::to_ascii_lowercase) {
        Some(b) if b.is_ascii_lowercase() => usize::from(b - b'a'),
        _ => 26,
    };
    Some(usize::from(first - b'a') * 27 + second)
}

/// A tag's primary subtag (up to its first `-`, at most 8 letters),
/// lowercase, packed into a `u64`.
fn primary(tag: &[u8]) -> u64 {
    tag.iter()
        .take_while(|&&b| b != b'-')
        .take(8)
        .fold(0, |packed, b| {
            packed << 8 | u64::from(b.to_ascii_lowercase())
        })
}

/// [`language_range`] over bytes, in one pass: the request side's check.
fn language_bytes(range: &[u8]) -> bool {
    let mut subtag = 0;
    let mut first = true;
    for &b in range {
        match b {
            b'-' if subtag > 0 => (subtag, first) = (0, false),
            b if b.is_ascii_alphabetic() || (!first && b.is_ascii_digit()) => subtag += 1,
            _ => return false,
        }
        if subtag > 8 {
            return false;
        }
    }
    subtag > 0 && range.len() <= 35
}

/// What the rules may look at in one request: read only when a rule asks.
#[derive(Debug, Clone, Copy)]
pub struct Traits<'a> {
    pub headers: &'a http::HeaderMap,
    pub on_net: bool,
}

static SEC_CH_UA_PLATFORM: http::HeaderName = http::HeaderName::from_static("sec-ch-ua-platform");

impl Traits<'_> {
    /// The platform: the `User-Agent`'s when it names one (browsers that
    /// trim their User-Agent keep the platform in it), else the
    /// `Sec-CH-UA-Platform` client hint's (an app may send only that).
    pub fn platform(&self) -> Platform {
        let agent = self.headers.get(http::header::USER_AGENT);
        let from_agent = platform_of(agent.map(|v| v.as_bytes()).unwrap_or_default());
        if from_agent != Platform::Other {
            return from_agent;
        }
        let hint = self.headers.get(&SEC_CH_UA_PLATFORM).map(|h| h.as_bytes());
        match hint.map(<[u8]>::trim_ascii) {
            Some(h)
                if h.eq_ignore_ascii_case(b"\"android\"") || h.eq_ignore_ascii_case(b"android") =>
            {
                Platform::Android
            }
            Some(h) if h.eq_ignore_ascii_case(b"\"ios\"") || h.eq_ignore_ascii_case(b"ios") => {
                Platform::Ios
            }
            _ => Platform::Other,
        }
    }

    /// Which of `compiled`'s rules name a range the client accepts: one
    /// pass over its `Accept-Language` headers.
    ///
    /// An entry is parsed whole ([`entry`]: its tag checked, its q read)
    /// only if its tag starts with the two characters some range starts
    /// with and some range covers it: most entries cost a bit test.
    fn accepted(&self, compiled: &Compiled) -> Rules {
        let mut mask = 0;
        for value in self.headers.get_all(http::header::ACCEPT_LANGUAGE) {
            // The entries as `split_on(.., b',')` gives them, by plain
            // loops: on a header this short they beat `memchr`.
            let (mut rest, mut taken) = (Some(value.as_bytes()), 0);
            while let Some(bytes) = rest.take() {
                if taken == MAX_ACCEPTED {
                    break;
                }
                taken += 1;
                let raw = match bytes.iter().position(|&b| b == b',') {
                    Some(at) => {
                        rest = Some(&bytes[at + 1..]);
                        &bytes[..at]
                    }
                    None => bytes,
                };
                let passed = pair(raw.trim_ascii_start())
                    .is_some_and(|p| compiled.pairs[p / 64] & (1 << (p % 64)) != 0);
                if !passed {
                    continue;
                }
                let tag_end = raw.iter().position(|&b| b == b';').unwrap_or(raw.len());
                let tag = raw[..tag_end].trim_ascii();
                let tag_primary = primary(tag);
                let ranges = compiled.ranges.iter().zip(&compiled.primaries);
                let mut bits = 0;
                for ((range, &range_primary), rules) in ranges.zip(&compiled.range_rules) {
                    if range_primary == tag_primary && covers(range.as_bytes(), tag) {
                        bits |= rules;
                    }
                }
                if bits != 0 && entry(raw).is_some_and(|(_, q)| q > 0) {
                    mask |= bits;
                }
            }
        }
        mask
    }
}

/// The platform a `User-Agent` names: `Android`, else `iPhone`, `iPad`,
/// `iPod` or `iOS`. One SIMD search for `Android` (the most common), then
/// a scan for the `i` the others start with.
fn platform_of(agent: &[u8]) -> Platform {
    static ANDROID: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"Android"));
    if ANDROID.find(agent).is_some() {
        return Platform::Android;
    }
    let ios = memchr::memchr_iter(b'i', agent).any(|at| {
        let rest = &agent[at + 1..];
        [&b"Phone"[..], b"Pad", b"Pod", b"OS"]
            .iter()
            .any(|d| rest.starts_with(d))
    });
    match ios {
        true => Platform::Ios,
        false => Platform::Other,
    }
}

/// The entries of an `Accept-Language` value: (range, q in thousandths),
/// at most [`MAX_ACCEPTED`]; `*` and entries that do not parse are left
/// out.
fn entries(value: &[u8]) -> impl Iterator<Item = (&[u8], u16)> {
    split_on(value, b',').take(MAX_ACCEPTED).filter_map(entry)
}

/// One `Accept-Language` entry: its range and q (thousandths); `None` for
/// `*` and an entry that does not parse.
fn entry(entry: &[u8]) -> Option<(&[u8], u16)> {
    let mut parts = split_on(entry, b';');
    let range = parts.next()?.trim_ascii();
    let mut q = 1000;
    for param in parts {
        let param = param.trim_ascii();
        let (name, value) = param.split_at(memchr::memchr(b'=', param)?);
        if name.trim_ascii().eq_ignore_ascii_case(b"q") {
            q = qvalue(value[1..].trim_ascii())?;
        }
    }
    (range != b"*" && language_bytes(range)).then_some((range, q))
}

/// The parts of `bytes` between `separator`s, found with `memchr` (a
/// slice's `split` calls its predicate through a pointer once a byte).
fn split_on(bytes: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let part = rest?;
        match memchr::memchr(separator, part) {
            Some(at) => {
                rest = Some(&part[at + 1..]);
                Some(&part[..at])
            }
            None => {
                rest = None;
                Some(part)
            }
        }
    })
}

/// An RFC 9110 qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn qvalue(text: &[u8]) -> Option<u16> {
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let thousandths = fraction
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The `Accept-Language` entries (range, q), in the header's order; `*`
/// and entries that do not parse are left out.
pub fn accepted_languages(header: &str) -> Vec<(&str, f32)> {
    entries(header.as_bytes())
        .map(|(range, q)| {
            let range = std::str::from_utf8(range).expect("a language range is ASCII");
            (range, f32::from(q) / 1000.0)
        })
        .collect()
}

/// Whether the rule's range `wanted` (lowercase) covers the client's
/// `tag`: equal, or a prefix of it ending at a `-` (`fr` covers `fr-CA`),
/// in any case.
fn covers(wanted: &[u8], tag: &[u8]) -> bool {
    tag.len() >= wanted.len()
        && tag[..wanted.len()].eq_ignore_ascii_case(wanted)
        && (tag.len() == wanted.len() || tag[wanted.len()] == b'-')
}

/// The first rule of `compiled` whose conditions hold for `traits`;
/// `None`: the code's own target. `now` (Unix milliseconds) is asked only
/// if a rule has a time window; a header is read only if a rule that could
/// still win asks about it.
pub fn choose(
    compiled: &Compiled,
    traits: &Traits<'_>,
    now: impl FnOnce() -> u64,
) -> Option<usize> {
    let sets = &compiled.sets;
    let mut held = match traits.on_net {
        true => sets.on_net,
        false => sets.off_net,
    };
    if !compiled.windows.is_empty() {
        let now_ms = now();
        for (i, &(from_ms, until_ms)) in compiled.windows.iter().enumerate() {
            if !(from_ms..until_ms).contains(&now_ms) {
                held &= !(1 << i);
            }
        }
    }
    // No rule after the first that holds without a header can win.
    let asks = sets.platform | sets.languages;
    let free = held & !asks;
    if free != 0 {
        held &= free ^ (free - 1);
    }
    if held & sets.platform != 0 {
        held &= sets.by_platform[traits.platform() as usize];
    }
    if held & sets.languages != 0 {
        held &= !sets.languages | traits.accepted(compiled);
    }
    (held != 0).then(|| held.trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(target: &str) -> TargetRule {
        TargetRule {
            languages: vec![],
            platforms: vec![],
            network: None,
            from_ms: None,
            until_ms: None,
            target: target.into(),
        }
    }

    fn headers(lang: &str, agent: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Ok(lang) = http::HeaderValue::from_str(lang) {
            headers.insert(http::header::ACCEPT_LANGUAGE, lang);
        }
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_str(agent).unwrap(),
        );
        headers
    }

    /// The index of the rule `rules` pick for `headers`, `on_net`, at `now`.
    fn pick(
        rules: &[TargetRule],
        headers: &http::HeaderMap,
        on_net: bool,
        now: u64,
    ) -> Option<usize> {
        let compiled = Compiled::new(rules.to_vec());
        choose(&compiled, &Traits { headers, on_net }, || now)
    }

    const IPHONE: &str =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15";
    const PIXEL: &str = "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0";

    /// The poster of the issue: French phones to the French page, iPhones
    /// to the App Store, on-net subscribers to the zero-rated page, everyone
    /// to the campaign until it ends.
    #[test]
    fn the_poster_sends_each_phone_where_it_belongs() {
        let rules = vec![
            TargetRule {
                languages: vec!["fr".into()],
                ..rule("https://example.org/fr")
            },
            TargetRule {
                platforms: vec![Platform::Ios],
                ..rule("https://apps.apple.com/app")
            },
            TargetRule {
                network: Some(Network::OnNet),
                ..rule("https://zero.mno.example/")
            },
            TargetRule {
                until_ms: Some(2_000),
                ..rule("https://example.org/campaign")
            },
        ];
        assert_eq!(
            pick(&rules, &headers("fr-CA,en;q=0.5", PIXEL), false, 1_000),
            Some(0)
        );
        assert_eq!(
            pick(&rules, &headers("en-GB,fr;q=0", IPHONE), false, 1_000),
            Some(1),
            "fr refused (q=0)"
        );
        assert_eq!(pick(&rules, &headers("de", PIXEL), true, 1_000), Some(2));
        assert_eq!(pick(&rules, &headers("de", PIXEL), false, 1_000), Some(3));
        assert_eq!(
            pick(&rules, &headers("de", PIXEL), false, 2_000),
            None,
            "campaign over"
        );
        let mut hinted = headers("de", "SomeApp/1.0");
        hinted.insert(
            "sec-ch-ua-platform",
            http::HeaderValue::from_static("\"iOS\""),
        );
        assert_eq!(
            pick(&rules, &hinted, false, 1_000),
            Some(1),
            "the client hint, when the User-Agent names no platform"
        );
        // Two Accept-Language lines count as one list (RFC 9110 §5.3).
        let mut two = headers("de", PIXEL);
        two.append(
            http::header::ACCEPT_LANGUAGE,
            http::HeaderValue::from_static("fr;q=0.1"),
        );
        assert_eq!(pick(&rules, &two, false, 1_000), Some(0));
    }

    #[test]
    fn the_clock_is_read_only_for_rules_with_a_time_window() {
        let plain = Compiled::new(vec![rule("https://example.org/")]);
        let h = headers("de", PIXEL);
        let traits = Traits {
            headers: &h,
            on_net: false,
        };
        assert_eq!(
            choose(&plain, &traits, || panic!("the clock was read")),
            Some(0)
        );
    }

    #[test]
    fn accept_language_is_read_as_rfc_9110_says() {
        assert_eq!(
            accepted_languages("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5"),
            [("fr-CH", 1.0), ("fr", 0.9), ("en", 0.8), ("de", 0.7)]
        );
        assert_eq!(
            accepted_languages("en;q=2, x y, ;q=1, fr;q=abc, es;Q=0.1, it;q=0.0001"),
            [("es", 0.1)]
        );
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"1.5"), None);
        assert!(covers(b"fr", b"fr-CA") && covers(b"fr", b"FR") && covers(b"pt-br", b"pt-BR"));
        assert!(!covers(b"fr", b"fro") && !covers(b"pt-br", b"pt") && !covers(b"en-us", b"en"));
    }

    #[test]
    fn rules_are_checked() {
        let too_many = vec![rule("https://example.org/"); MAX_RULES + 1];
        assert!(check_rules(&too_many).is_err());
        let bad = [
            TargetRule {
                languages: vec!["fr_FR".into()],
                ..rule("https://example.org/")
            },
            rule("javascript:alert(1)"),
            TargetRule {
                from_ms: Some(5),
                until_ms: Some(5),
                ..rule("https://example.org/")
            },
        ];
        for r in bad {
            assert!(check_rules(std::slice::from_ref(&r)).is_err(), "{r:?}");
        }
        check_rules(&[TargetRule {
            languages: vec!["zh-Hant-TW".into()],
            ..rule("https://example.org/")
        }])
        .unwrap();
        let many: Vec<_> = (0..5)
            .map(|r| TargetRule {
                languages: (0..16).map(|l| format!("x{r}{l}")).collect(),
                ..rule("https://example.org/")
            })
            .collect();
        assert!(
            check_rules(&many)
                .unwrap_err()
                .contains("distinct languages")
        );
    }

    fn any_rule() -> impl Strategy<Value = TargetRule> {
        (
            proptest::collection::vec(prop_oneof![Just("fr"), Just("EN"), Just("pt-BR")], 0..3),
            proptest::collection::vec(
                prop_oneof![
                    Just(Platform::Ios),
                    Just(Platform::Android),
                    Just(Platform::Other)
                ],
                0..2,
            ),
            proptest::option::of(prop_oneof![Just(Network::OnNet), Just(Network::OffNet)]),
            proptest::option::of(0..2_000u64),
            proptest::option::of(0..2_000u64),
        )
            .prop_map(
                |(languages, platforms, network, from_ms, until_ms)| TargetRule {
                    languages: languages.into_iter().map(str::to_owned).collect(),
                    platforms,
                    network,
                    from_ms,
                    until_ms,
                    target: "https://example.org/".into(),
                },
            )
    }

    /// An `Accept-Language` value of entries near the rules' ranges (the
    /// same, a prefix, longer, in other cases), with and without a q, some
    /// of them refused (`q=0`) or not parsing.
    fn any_accept_language() -> impl Strategy<Value = String> {
        let entry = (
            "fr|FR-ca|fro|en|En-US|e|pt|pt-BR|pt-br-x|PT-BRA|de|i-x|\\*|f r|",
            "|;q=0|;q=0\\.5|;Q=1|; q=0\\.001|;q=2|;q=abc",
        )
            .prop_map(|(tag, q)| format!("{tag}{q}"));
        (proptest::collection::vec(entry, 0..5), ",|, | ,")
            .prop_map(|(entries, comma)| entries.join(&comma))
    }

    /// A rule's conditions read straight off the request, the slow way:
    /// what `choose` must agree with.
    fn holds(rule: &TargetRule, header: &str, agent: &str, on_net: bool, now: u64) -> bool {
        let accepted = accepted_languages(header);
        let language = rule.languages.is_empty()
            || accepted.iter().any(|(tag, q)| {
                *q > 0.0
                    && rule
                        .languages
                        .iter()
                        .any(|l| covers(l.to_ascii_lowercase().as_bytes(), tag.as_bytes()))
            });
        let platform = if agent.contains("Android") {
            Platform::Android
        } else if agent.contains("iPhone") {
            Platform::Ios
        } else {
            Platform::Other
        };
        language
            && (rule.platforms.is_empty() || rule.platforms.contains(&platform))
            && rule.network.is_none_or(|n| (n == Network::OnNet) == on_net)
            && rule.from_ms.is_none_or(|f| now >= f)
            && rule.until_ms.is_none_or(|u| now < u)
    }

    proptest! {
        /// The request side's one-pass check agrees with the rules' one.
        #[test]
        fn language_checks_agree(text in "[a-zA-Z0-9-]{0,40}") {
            prop_assert_eq!(language_bytes(text.as_bytes()), language_range(&text));
        }

        /// The platform a `User-Agent` names, read the slow way: `Android`
        /// anywhere wins, then any of the iOS devices.
        #[test]
        fn the_platform_is_the_one_the_agent_names(parts in proptest::collection::vec(
            "Android|iPhone|iPad|iPod|iOS|Andro|iP|i|A|Mozilla/5.0 \\(Linux; |[a-zA-Z ;/()]{0,4}",
            0..8,
        )) {
            let agent = parts.concat();
            let slow = if agent.contains("Android") {
                Platform::Android
            } else if ["iPhone", "iPad", "iPod", "iOS"].iter().any(|d| agent.contains(d)) {
                Platform::Ios
            } else {
                Platform::Other
            };
            prop_assert_eq!(platform_of(agent.as_bytes()), slow);
        }

        /// Whatever the rules and the request: the choice is the first
        /// rule whose conditions hold, each read the slow way; a rule
        /// without conditions always holds.
        #[test]
        fn the_first_rule_that_holds_wins(
            rules in proptest::collection::vec(any_rule(), 0..MAX_RULES),
            header in prop_oneof![any_accept_language(), "[a-zA-Z;=,. 0-9*-]{0,40}"],
            agent in prop_oneof![Just(IPHONE), Just(PIXEL), Just("curl/8.0")],
            on_net in any::<bool>(),
            now in 0..2_500u64,
        ) {
            let h = headers(&header, agent);
            let expected = rules.iter().position(|r| holds(r, &header, agent, on_net, now));
            prop_assert_eq!(pick(&rules, &h, on_net, now), expected);
            let mut with_catch_all = rules.clone();
            with_catch_all.push(rule("https://example.org/any"));
            prop_assert!(pick(&with_catch_all, &h, on_net, now).is_some());
        }
    }
}
