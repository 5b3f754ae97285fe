//! Resolution rules: one code, different answers. A code may hold an
//! ordered list of [`TargetRule`]s, each with conditions on the request
//! and a target; [`choose`] picks the first rule whose conditions all hold
//! (an empty condition holds for everyone), and the code's own target
//! answers when none does. Conditions: the languages the client accepts
//! (`Accept-Language`, a language with `q=0` refused), its platform
//! (`Sec-CH-UA-Platform`, else `User-Agent`), whether it is on the MNO's
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
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Ios,
    Android,
    Other,
}

/// Where the client is, as the identity decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
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

/// What the rules may look at in one request (headers unparsed until a
/// rule asks).
#[derive(Debug, Clone, Copy)]
pub struct Traits<'a> {
    pub accept_language: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// `Sec-CH-UA-Platform` (a client hint, quoted: `"Android"`).
    pub platform_hint: Option<&'a str>,
    pub on_net: bool,
    pub now_ms: u64,
}

impl<'a> Traits<'a> {
    pub fn from_headers(headers: &'a http::HeaderMap, on_net: bool, now_ms: u64) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Traits {
            accept_language: text("accept-language"),
            user_agent: text("user-agent"),
            platform_hint: text("sec-ch-ua-platform"),
            on_net,
            now_ms,
        }
    }

    /// The platform: the client hint when it names one, else the
    /// `User-Agent`.
    pub fn platform(&self) -> Platform {
        let hint = self.platform_hint.map(|h| h.trim().trim_matches('"'));
        match hint {
            Some(h) if h.eq_ignore_ascii_case("android") => return Platform::Android,
            Some(h) if h.eq_ignore_ascii_case("ios") => return Platform::Ios,
            _ => {}
        }
        let agent = self.user_agent.unwrap_or_default();
        if agent.contains("Android") {
            Platform::Android
        } else if ["iPhone", "iPad", "iPod", "iOS"]
            .iter()
            .any(|d| agent.contains(d))
        {
            Platform::Ios
        } else {
            Platform::Other
        }
    }
}

/// The `Accept-Language` entries (range, q), in the header's order; `*`
/// and entries that do not parse are left out.
pub fn accepted_languages(header: &str) -> Vec<(&str, f32)> {
    header
        .split(',')
        .take(MAX_ACCEPTED)
        .filter_map(|entry| {
            let mut parts = entry.split(';');
            let range = parts.next()?.trim();
            let mut q = 1.0;
            for param in parts {
                let (name, value) = param.split_once('=')?;
                if name.trim().eq_ignore_ascii_case("q") {
                    q = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))?;
                }
            }
            (range != "*" && language_range(range)).then_some((range, q))
        })
        .collect()
}

/// Whether the rule's range `wanted` covers the client's `tag`: equal, or
/// a prefix of it ending at a `-` (`fr` covers `fr-CA`), in any case.
fn covers(wanted: &str, tag: &str) -> bool {
    tag.len() >= wanted.len()
        && tag.as_bytes()[..wanted.len()].eq_ignore_ascii_case(wanted.as_bytes())
        && (tag.len() == wanted.len() || tag.as_bytes()[wanted.len()] == b'-')
}

/// The first rule of `rules` whose conditions hold for `traits`; `None`:
/// the code's own target.
pub fn choose(rules: &[TargetRule], traits: &Traits<'_>) -> Option<usize> {
    // Parsed once, at the first rule that asks.
    let mut languages: Option<Vec<(&str, f32)>> = None;
    let mut platform = None;
    rules.iter().position(|rule| {
        let on_time = rule.from_ms.is_none_or(|from| traits.now_ms >= from)
            && rule.until_ms.is_none_or(|until| traits.now_ms < until);
        let network = match rule.network {
            None => true,
            Some(Network::OnNet) => traits.on_net,
            Some(Network::OffNet) => !traits.on_net,
        };
        if !(on_time && network) {
            return false;
        }
        if !rule.platforms.is_empty() {
            let platform = *platform.get_or_insert_with(|| traits.platform());
            if !rule.platforms.contains(&platform) {
                return false;
            }
        }
        rule.languages.is_empty() || {
            let accepted = languages.get_or_insert_with(|| {
                traits
                    .accept_language
                    .map(accepted_languages)
                    .unwrap_or_default()
            });
            accepted
                .iter()
                .any(|(tag, q)| *q > 0.0 && rule.languages.iter().any(|l| covers(l, tag)))
        }
    })
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

    fn traits<'a>(lang: &'a str, agent: &'a str) -> Traits<'a> {
        Traits {
            accept_language: Some(lang),
            user_agent: Some(agent),
            platform_hint: None,
            on_net: false,
            now_ms: 1_000,
        }
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
        let pick = |t: Traits<'_>| choose(&rules, &t);
        assert_eq!(pick(traits("fr-CA,en;q=0.5", PIXEL)), Some(0));
        assert_eq!(
            pick(traits("en-GB,fr;q=0", IPHONE)),
            Some(1),
            "fr refused (q=0)"
        );
        assert_eq!(
            pick(Traits {
                on_net: true,
                ..traits("de", PIXEL)
            }),
            Some(2)
        );
        assert_eq!(pick(traits("de", PIXEL)), Some(3));
        assert_eq!(
            pick(Traits {
                now_ms: 2_000,
                ..traits("de", PIXEL)
            }),
            None,
            "campaign over"
        );
        let hinted = Traits {
            platform_hint: Some("\"iOS\""),
            ..traits("de", PIXEL)
        };
        assert_eq!(
            pick(hinted),
            Some(1),
            "the client hint wins over the User-Agent"
        );
    }

    #[test]
    fn accept_language_is_read_as_rfc_9110_says() {
        assert_eq!(
            accepted_languages("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5"),
            [("fr-CH", 1.0), ("fr", 0.9), ("en", 0.8), ("de", 0.7)]
        );
        assert_eq!(
            accepted_languages("en;q=2, x y, ;q=1, fr;q=abc, es;Q=0.1"),
            [("es", 0.1)]
        );
        assert!(covers("fr", "fr-CA") && covers("FR", "fr") && covers("pt-BR", "pt-br"));
        assert!(!covers("fr", "fro") && !covers("pt-BR", "pt") && !covers("en-US", "en"));
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
            assert!(check_rules(&[r.clone()]).is_err(), "{r:?}");
        }
        check_rules(&[TargetRule {
            languages: vec!["zh-Hant-TW".into()],
            ..rule("https://example.org/")
        }])
        .unwrap();
    }

    fn any_rule() -> impl Strategy<Value = TargetRule> {
        (
            proptest::collection::vec(prop_oneof![Just("fr"), Just("en"), Just("pt-BR")], 0..3),
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

    proptest! {
        /// Whatever the rules and the request: the choice is the first
        /// rule that holds on its own (the order is the operator's), and
        /// a rule without conditions always holds.
        #[test]
        fn the_first_rule_that_holds_wins(
            rules in proptest::collection::vec(any_rule(), 0..8),
            header in "[a-zA-Z;=,. 0-9*-]{0,40}",
            agent in prop_oneof![Just(IPHONE), Just(PIXEL), Just("curl/8.0")],
            on_net in any::<bool>(),
            now_ms in 0..2_500u64,
        ) {
            let t = Traits { on_net, now_ms, ..traits(&header, agent) };
            let alone = rules.iter().position(|r| choose(std::slice::from_ref(r), &t) == Some(0));
            prop_assert_eq!(choose(&rules, &t), alone);
            let mut with_catch_all = rules.clone();
            with_catch_all.push(rule("https://example.org/any"));
            prop_assert!(choose(&with_catch_all, &t).is_some());
        }
    }
}
