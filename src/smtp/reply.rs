//! Server-side helpers: reply-line syntax, enhanced status codes, EHLO
//! capability parsing, banner host names and firewall-masking heuristics.
//!
//! Pure functions over one line or one complete reply; no state, no I/O.

use super::SmtpEvent;

/// One syntactically valid reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyLine {
    /// The three-digit code.
    pub code: u16,
    /// `true` for `ddd-text` (more lines follow).
    pub more: bool,
    /// The text after `ddd ` / `ddd-` (may be empty).
    pub text: String,
}

/// Why a server line is not a reply line.
pub(crate) fn parse_reply_line(line: &[u8]) -> Result<ReplyLine, String> {
    let digits = match line.get(..3) {
        Some(d) if d.iter().all(u8::is_ascii_digit) => d,
        _ => return Err(not_a_reply(line)),
    };
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(200..600).contains(&code) {
        return Err(format!(
            "reply code {code} is outside 2xx-5xx: not an SMTP reply"
        ));
    }
    let (more, text) = match line.get(3) {
        None => (false, &[][..]),
        Some(b' ') => (false, line.get(4..).unwrap_or_default()),
        Some(b'-') => (true, line.get(4..).unwrap_or_default()),
        Some(_) => {
            return Err(format!(
                "reply code {code} followed by {:?} instead of space or '-'",
                char::from(line.get(3).copied().unwrap_or(b'?'))
            ))
        }
    };
    Ok(ReplyLine {
        code,
        more,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

fn not_a_reply(line: &[u8]) -> String {
    if line.starts_with(b"HTTP/") {
        "server sent an HTTP response, not SMTP (upstream is a web server?)".into()
    } else if line.starts_with(b"SSH-") {
        "server sent an SSH banner, not SMTP".into()
    } else if line.starts_with(b"+OK") || line.starts_with(b"* OK") {
        "server sent a POP3/IMAP greeting, not SMTP".into()
    } else {
        "reply without a 3-digit code".into()
    }
}

/// Splits an enhanced status code (`5.7.1`) off the start of a reply text.
pub(crate) fn split_enhanced(text: &str) -> (Option<&str>, &str) {
    let word_end = text.find(' ').unwrap_or(text.len());
    let word = text.get(..word_end).unwrap_or_default();
    let number = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut parts = word.split('.');
    let ok = matches!(parts.next(), Some("2" | "4" | "5"))
        && number(parts.next())
        && number(parts.next())
        && parts.next().is_none();
    if ok {
        let rest = text
            .get(word_end..)
            .unwrap_or_default()
            .trim_start_matches(' ');
        (Some(word), rest)
    } else {
        (None, text)
    }
}

/// A complete reply: code of its first line, raw lines and texts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reply {
    /// Code of the first line.
    pub code: u16,
    /// Raw lines without line endings (lossy UTF-8).
    pub lines: Vec<String>,
    /// Texts after the code and separator.
    pub texts: Vec<String>,
}

impl Reply {
    /// The enhanced status code of the first line, and all texts joined
    /// (with an identical enhanced code stripped from each line).
    pub fn enhanced_and_text(&self) -> (Option<String>, String) {
        let first = self.texts.first().map(String::as_str).unwrap_or_default();
        let (enhanced, _) = split_enhanced(first);
        let mut text = String::new();
        for (i, t) in self.texts.iter().enumerate() {
            let part = match split_enhanced(t) {
                (Some(e), rest) if Some(e) == enhanced => rest,
                _ => t.as_str(),
            };
            if i > 0 {
                text.push(' ');
            }
            text.push_str(part);
        }
        (enhanced.map(str::to_string), text)
    }
}

/// The first word of a text if it looks like a DNS host name (has a dot,
/// only letters, digits, hyphens and dots, not all digits) or an address
/// literal in brackets.
pub(crate) fn host_of(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    let bracketed = word.starts_with('[') && word.ends_with(']') && word.len() > 2;
    let dns = word.contains('.')
        && !word.starts_with('.')
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && word.bytes().any(|b| b.is_ascii_alphabetic());
    (bracketed || dns).then(|| word.to_string())
}

/// A banner or greeting text mostly made of `*`, as Cisco PIX/ASA SMTP
/// inspection rewrites it (`****************************2*0**0*2***`).
pub(crate) fn is_star_masked(text: &str) -> bool {
    let visible = text.chars().filter(|c| !c.is_whitespace()).count();
    let stars = text.chars().filter(|&c| c == '*').count();
    stars >= 4 && stars * 2 >= visible
}

/// A capability keyword made of `X`s, as firewall inspection rewrites
/// unknown extensions (`XXXXXXXA`, `XXXXXXXB`).
pub(crate) fn is_x_masked(word: &str) -> bool {
    let xs = word.bytes().take_while(|&b| b == b'X').count();
    let rest = word.get(xs..).unwrap_or_default();
    xs >= 4 && rest.len() <= 1 && rest.bytes().all(|b| b.is_ascii_uppercase())
}

/// Builds `smtp.capabilities` from a 250 reply to EHLO/LHLO.
pub(crate) fn capabilities(reply: &Reply) -> SmtpEvent {
    let host = reply.texts.first().and_then(|t| host_of(t));
    // Keyword lines as sent; an empty one (a bare "250 " closing line) is not a capability.
    let caps: Vec<String> = reply
        .texts
        .iter()
        .skip(1)
        .filter(|t| !t.trim().is_empty())
        .cloned()
        .collect();
    let mut ev = CapsBuilder::default();
    for cap in &caps {
        let mut words = cap.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        match keyword.as_str() {
            "STARTTLS" => ev.starttls = true,
            "SIZE" => ev.size = words.next().and_then(|s| s.parse().ok()).or(ev.size),
            "PIPELINING" => ev.pipelining = true,
            "CHUNKING" => ev.chunking = true,
            "8BITMIME" => ev.eightbitmime = true,
            "SMTPUTF8" => ev.smtputf8 = true,
            "REQUIRETLS" => ev.requiretls = true,
            "ENHANCEDSTATUSCODES" => ev.enhancedstatuscodes = true,
            "AUTH" => ev.add_auth(words),
            k if k.starts_with("AUTH=") => {
                let first = k.get(5..).unwrap_or_default();
                ev.add_auth(std::iter::once(first).chain(words));
            }
            _ => {}
        }
    }
    SmtpEvent::Capabilities {
        code: reply.code,
        host,
        capabilities: caps,
        starttls: ev.starttls,
        size: ev.size,
        auth: ev.auth,
        pipelining: ev.pipelining,
        chunking: ev.chunking,
        eightbitmime: ev.eightbitmime,
        smtputf8: ev.smtputf8,
        requiretls: ev.requiretls,
        enhancedstatuscodes: ev.enhancedstatuscodes,
    }
}

#[derive(Default)]
struct CapsBuilder {
    starttls: bool,
    size: Option<u64>,
    auth: Vec<String>,
    pipelining: bool,
    chunking: bool,
    eightbitmime: bool,
    smtputf8: bool,
    requiretls: bool,
    enhancedstatuscodes: bool,
}

impl CapsBuilder {
    fn add_auth<'a>(&mut self, mechs: impl Iterator<Item = &'a str>) {
        for m in mechs {
            let m = m.to_ascii_uppercase();
            if !m.is_empty() && !self.auth.contains(&m) {
                self.auth.push(m);
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-PIPELINING"),
            Ok(ReplyLine {
                code: 250,
                more: true,
                text: "PIPELINING".into()
            })
        );
        assert_eq!(
            parse_reply_line(b"354"),
            Ok(ReplyLine {
                code: 354,
                more: false,
                text: String::new()
            })
        );
        assert!(parse_reply_line(b"25").is_err());
        assert!(parse_reply_line(b"HTTP/1.1 400 Bad Request")
            .unwrap_err()
            .contains("HTTP"));
        assert!(parse_reply_line(b"250x").is_err());
        assert!(parse_reply_line(b"999 x").is_err());
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(
            split_enhanced("5.7.1 Relay denied"),
            (Some("5.7.1"), "Relay denied")
        );
        assert_eq!(split_enhanced("4.7.0"), (Some("4.7.0"), ""));
        assert_eq!(split_enhanced("3.1.1 no"), (None, "3.1.1 no"));
        assert_eq!(split_enhanced("5.7.1.2 no"), (None, "5.7.1.2 no"));
        assert_eq!(split_enhanced("2.0.0Ok"), (None, "2.0.0Ok"));
        assert_eq!(split_enhanced("mx.example.com"), (None, "mx.example.com"));
    }

    #[test]
    fn hosts_and_masks() {
        assert_eq!(
            host_of("mx.example.com ESMTP"),
            Some("mx.example.com".into())
        );
        assert_eq!(host_of("ESMTP ready"), None);
        assert_eq!(host_of("*****.***"), None);
        assert!(is_star_masked("****************************2*0**0*2***"));
        assert!(!is_star_masked("mx.example.com ESMTP *"));
        assert!(is_x_masked("XXXXXXXA"));
        assert!(is_x_masked("XXXXXXXB"));
        assert!(!is_x_masked("XCLIENT"));
        assert!(!is_x_masked("X-EXPS"));
    }
}
