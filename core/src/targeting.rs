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

/// A code's rules, made ready to be matched fast: the distinct language
/// ranges of all its rules (lowercase), and for each rule the bit mask of
/// its ranges among them, so that a request's `Accept-Language` is read
/// once, in one pass, without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    rules: Vec<TargetRule>,
    /// Each rule's conditions, side by side: the loop of [`choose`] reads
    /// these, not the rules.
    conditions: Vec<Conditions>,
    ranges: Vec<String>,
    /// Each range's primary subtag, packed ([`primary`]): most ranges are
    /// told apart from a tag by one compare.
    primaries: Vec<u64>,
    /// The first letters of the ranges, a bit each (`a` is bit 0).
    letters: u32,
    masks: Vec<u64>,
    /// Whether any rule has a time window (else the clock is not read).
    timed: bool,
}

/// One rule's conditions, compact: its ranges and platforms as bits, its
/// window as bounds (0 and `u64::MAX` when open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conditions {
    languages: u64,
    platforms: u8,
    network: Option<Network>,
    from_ms: u64,
    until_ms: u64,
}

/// Most distinct language ranges the rules of one code name (one bit each).
pub const MAX_CODE_LANGUAGES: usize = 64;

impl Compiled {
    /// `rules`, which [`check_rules`] accepted.
    pub fn new(rules: Vec<TargetRule>) -> Compiled {
        let mut ranges: Vec<String> = Vec::new();
        let masks = rules
            .iter()
            .map(|rule| {
                rule.languages.iter().fold(0u64, |mask, language| {
                    let language = language.to_ascii_lowercase();
                    let at = match ranges.iter().position(|r| *r == language) {
                        Some(at) => at,
                        None => {
                            ranges.push(language);
                            ranges.len() - 1
                        }
                    };
                    mask | 1u64.checked_shl(at as u32).unwrap_or(0)
                })
            })
            .collect();
        let timed = rules
            .iter()
            .any(|r| r.from_ms.is_some() || r.until_ms.is_some());
        let primaries = ranges.iter().map(|r| primary(r.as_bytes())).collect();
        let conditions = rules
            .iter()
            .zip(&masks)
            .map(|(rule, &languages)| Conditions {
                languages,
                platforms: rule
                    .platforms
                    .iter()
                    .fold(0, |bits, &p| bits | platform_bit(p)),
                network: rule.network,
                from_ms: rule.from_ms.unwrap_or(0),
                until_ms: rule.until_ms.unwrap_or(u64::MAX),
            })
            .collect();
        let letters = ranges
            .iter()
            .filter_map(|r| r.bytes().next().filter(u8::is_ascii_lowercase))
            .fold(0, |letters, b| letters | 1 << (b - b'a'));
        Compiled {
            rules,
            conditions,
            ranges,
            primaries,
            letters,
            masks,
            timed,
        }
    }

    pub fn rules(&self) -> &[TargetRule] {
        &self.rules
    }
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

    /// Which of `compiled`'s ranges the client accepts (a bit each): one
    /// pass over its `Accept-Language` headers.
    ///
    /// An entry is parsed whole ([`entry`]: its tag checked, its q read)
    /// only if its tag starts with a letter some range starts with and
    /// some range covers it: most entries cost a byte compare.
    fn accepted(&self, compiled: &Compiled) -> u64 {
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
                let tag_end = raw.iter().position(|&b| b == b';').unwrap_or(raw.len());
                let tag = raw[..tag_end].trim_ascii();
                let Some(first) = tag.first().map(u8::to_ascii_lowercase) else {
                    continue;
                };
                if !first.is_ascii_lowercase() || compiled.letters & (1 << (first - b'a')) == 0 {
                    continue;
                }
                let tag_primary = primary(tag);
                let ranges = compiled.ranges.iter().zip(&compiled.primaries);
                let mut bits = 0;
                for (i, (range, &range_primary)) in ranges.enumerate().take(MAX_CODE_LANGUAGES) {
                    if range_primary == tag_primary && covers(range.as_bytes(), tag) {
                        bits |= 1 << i;
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
/// `iPod` or `iOS`; one SIMD scan for the letters they start with.
fn platform_of(agent: &[u8]) -> Platform {
    let mut ios = false;
    for at in memchr::memchr2_iter(b'A', b'i', agent) {
        let rest = &agent[at..];
        if rest.starts_with(b"Android") {
            return Platform::Android;
        }
        ios |= [&b"iPhone"[..], b"iPad", b"iPod", b"iOS"]
            .iter()
            .any(|d| rest.starts_with(d));
    }
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
/// if a rule has a time window.
pub fn choose(
    compiled: &Compiled,
    traits: &Traits<'_>,
    now: impl FnOnce() -> u64,
) -> Option<usize> {
    let now_ms = match compiled.timed {
        true => now(),
        false => 0,
    };
    // Read once, at the first rule that asks.
    let mut accepted: Option<u64> = None;
    let mut platform = None;
    compiled.conditions.iter().position(|c| {
        let on_time = now_ms >= c.from_ms && now_ms < c.until_ms;
        let network = match c.network {
            None => true,
            Some(Network::OnNet) => traits.on_net,
            Some(Network::OffNet) => !traits.on_net,
        };
        if !(on_time && network) {
            return false;
        }
        if c.platforms != 0 {
            let platform = *platform.get_or_insert_with(|| traits.platform());
            if c.platforms & platform_bit(platform) == 0 {
                return false;
            }
        }
        c.languages == 0
            || c.languages & *accepted.get_or_insert_with(|| traits.accepted(compiled)) != 0
    })
}

fn platform_bit(platform: Platform) -> u8 {
    1 << platform as u8
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

        /// Whatever the rules and the request: the choice is the first
        /// rule whose conditions hold, each read the slow way; a rule
        /// without conditions always holds.
        #[test]
        fn the_first_rule_that_holds_wins(
            rules in proptest::collection::vec(any_rule(), 0..8),
            header in "[a-zA-Z;=,. 0-9*-]{0,40}",
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
