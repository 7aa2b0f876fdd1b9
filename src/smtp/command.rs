//! Client-side helpers: splitting a command line into verb and argument,
//! redacting AUTH, recognising BDAT sizes, HTTP requests and masked commands,
//! and locating the credential bytes of an AUTH line.
//!
//! Pure functions over one line; no state, no I/O. Nothing returned here may
//! contain an AUTH initial response.

/// Longest command text kept to label a reply (`command` field).
const MAX_LABEL: usize = 256;

/// Word separators on a command line. RFC 5321 says SP, but servers such as
/// Postfix also split on tabs, so a credential after a tab must be found too.
fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A client command line, split and redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    /// Upper-cased verb.
    pub verb: String,
    /// Argument text (after the first space), redacted for AUTH.
    pub arg: String,
}

impl Command {
    /// Parses a line (line ending already removed).
    pub fn parse(line: &[u8]) -> Command {
        let start = line.iter().position(|&b| !is_sep(b)).unwrap_or(line.len());
        let line = line.get(start..).unwrap_or_default();
        let (verb, arg) = match line.iter().position(|&b| is_sep(b)) {
            Some(sp) => (
                line.get(..sp).unwrap_or_default(),
                line.get(sp + 1..).unwrap_or_default(),
            ),
            None => (line, &[][..]),
        };
        let verb = String::from_utf8_lossy(verb).to_ascii_uppercase();
        let arg = if verb == "AUTH" {
            let mut words = arg.split(|&b| is_sep(b)).filter(|w| !w.is_empty());
            let mech =
                String::from_utf8_lossy(words.next().unwrap_or_default()).to_ascii_uppercase();
            if words.next().is_some() {
                format!("{mech} [redacted]")
            } else {
                mech
            }
        } else {
            String::from_utf8_lossy(arg).into_owned()
        };
        Command { verb, arg }
    }

    /// The line as it labels a reply: `VERB arg`, bounded in length.
    pub fn label(&self) -> String {
        let mut s = if self.arg.is_empty() {
            self.verb.clone()
        } else {
            format!("{} {}", self.verb, self.arg)
        };
        if s.len() > MAX_LABEL {
            let mut cut = MAX_LABEL;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }

    /// For AUTH: the mechanism and whether an initial response was given.
    pub fn auth(&self) -> Option<(String, bool)> {
        (self.verb == "AUTH").then(|| {
            let mut words = self.arg.split(' ');
            let mech = words.next().unwrap_or_default().to_string();
            (mech, words.next().is_some())
        })
    }

    /// For BDAT: `Some(Ok((size, last)))`, or `Some(Err(why))` if malformed.
    pub fn bdat(&self) -> Option<Result<(u64, bool), String>> {
        if self.verb != "BDAT" {
            return None;
        }
        let mut words = self.arg.split_whitespace();
        let size = match words.next().map(str::parse::<u64>) {
            Some(Ok(n)) => n,
            _ => {
                return Some(Err(
                    "BDAT without a valid chunk size: cannot tell where its payload ends".into(),
                ))
            }
        };
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                return Some(Err(
                    "BDAT with an argument other than LAST: cannot trust its size".into(),
                ))
            }
        };
        Some(Ok((size, last)))
    }

    /// `Some(reason)` when the line is an HTTP request rather than SMTP.
    pub fn http_request(&self) -> Option<String> {
        const METHODS: [&str; 8] = [
            "GET", "POST", "HEAD", "PUT", "OPTIONS", "CONNECT", "DELETE", "PATCH",
        ];
        (METHODS.contains(&self.verb.as_str()) && self.arg.contains(" HTTP/")).then(|| {
            format!(
                "client sent an HTTP request ({}), not SMTP (a browser or HTTP proxy client?)",
                self.verb
            )
        })
    }

    /// For MAIL FROM / RCPT TO: the path without angle brackets (`""` for
    /// `<>`) and the ESMTP parameters. `None` for other commands or when the
    /// argument does not start with `FROM:` / `TO:`.
    pub fn path(&self) -> Option<(String, Vec<String>)> {
        let key = match self.verb.as_str() {
            "MAIL" => "FROM:",
            "RCPT" => "TO:",
            _ => return None,
        };
        let arg = self.arg.trim_start();
        let head = arg.get(..key.len())?;
        if !head.eq_ignore_ascii_case(key) {
            return None;
        }
        let rest = arg.get(key.len()..)?.trim_start();
        let (path, tail) = match rest.strip_prefix('<') {
            Some(inner) => match inner.find('>') {
                Some(end) => (inner.get(..end)?, inner.get(end + 1..)?),
                None => (inner, ""),
            },
            None => match rest.find(char::is_whitespace) {
                Some(sp) => (rest.get(..sp)?, rest.get(sp..)?),
                None => (rest, ""),
            },
        };
        let params = tail.split_whitespace().map(String::from).collect();
        Some((path.to_string(), params))
    }

    /// A command rewritten to `XXXX…` by firewall SMTP inspection.
    pub fn is_masked(&self) -> bool {
        self.verb.len() >= 4 && self.verb.bytes().all(|b| b == b'X')
    }
}

/// Start of the credential bytes in a (possibly partial) AUTH line: the
/// first byte after `AUTH <mechanism> `. `None` if not an AUTH line or the
/// mechanism is not complete yet. Every byte from there up to the first CR
/// or LF is secret.
pub(crate) fn auth_secret_start(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while buf.get(i).is_some_and(|&b| is_sep(b)) {
        i += 1;
    }
    let head = buf.get(i..i + 5)?;
    if !(head.get(..4)?.eq_ignore_ascii_case(b"AUTH") && head.get(4).is_some_and(|&b| is_sep(b))) {
        return None;
    }
    i += 5;
    while buf.get(i).is_some_and(|&b| is_sep(b)) {
        i += 1;
    }
    let mech_start = i;
    while matches!(buf.get(i), Some(&b) if !is_sep(b) && b != b'\r' && b != b'\n') {
        i += 1;
    }
    if i == mech_start || !buf.get(i).is_some_and(|&b| is_sep(b)) {
        return None;
    }
    // The secret starts at the first byte after the separators (a line that
    // ends in separators has none).
    while buf.get(i).is_some_and(|&b| is_sep(b)) {
        i += 1;
    }
    Some(i)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn auth_redaction() {
        let c = Command::parse(b"auth plain AGpvZQBzZWNyZXQ=");
        assert_eq!(c.verb, "AUTH");
        assert_eq!(c.arg, "PLAIN [redacted]");
        assert_eq!(c.auth(), Some(("PLAIN".into(), true)));
        let c = Command::parse(b"AUTH LOGIN");
        assert_eq!(c.arg, "LOGIN");
        assert_eq!(c.auth(), Some(("LOGIN".into(), false)));
        assert_eq!(auth_secret_start(b"AUTH PLAIN AGpv"), Some(11));
        assert_eq!(auth_secret_start(b"AUTH PLAIN"), None);
        assert_eq!(auth_secret_start(b"AUTH  LOGIN x"), Some(12));
        assert_eq!(auth_secret_start(b"MAIL FROM:<a>"), None);
    }

    /// Postfix splits command words on tabs as well as spaces: a credential
    /// after a tab is a credential.
    #[test]
    fn auth_redaction_with_tabs_and_leading_blanks() {
        for line in [
            &b"AUTH PLAIN\tAGpvZQBzZWNyZXQ="[..],
            b"AUTH\tPLAIN AGpvZQBzZWNyZXQ=",
            b"AUTH\tPLAIN\tAGpvZQBzZWNyZXQ=",
            b" AUTH PLAIN AGpvZQBzZWNyZXQ=",
            b"auth \t plain \t AGpvZQBzZWNyZXQ=",
        ] {
            let c = Command::parse(line);
            assert_eq!(c.verb, "AUTH", "{line:?}");
            assert_eq!(c.arg, "PLAIN [redacted]", "{line:?}");
            assert!(!c.label().contains("AGpv"), "{line:?}");
            let at = auth_secret_start(line).expect("secret found");
            assert_eq!(line.get(at..), Some(&b"AGpvZQBzZWNyZXQ="[..]), "{line:?}");
        }
        assert_eq!(auth_secret_start(b"AUTH\tLOGIN"), None);
        assert_eq!(auth_secret_start(b"AUTHX PLAIN x"), None);
    }

    #[test]
    fn bdat_and_http_and_masked() {
        assert_eq!(
            Command::parse(b"BDAT 1000 LAST").bdat(),
            Some(Ok((1000, true)))
        );
        assert_eq!(Command::parse(b"bdat 12").bdat(), Some(Ok((12, false))));
        assert!(matches!(Command::parse(b"BDAT x").bdat(), Some(Err(_))));
        assert!(Command::parse(b"GET / HTTP/1.1").http_request().is_some());
        assert!(Command::parse(b"GET x").http_request().is_none());
        assert!(Command::parse(b"XXXX").is_masked());
        assert!(!Command::parse(b"XCLIENT NAME=x").is_masked());
        let long = Command::parse(&[b'a'; 1000]);
        assert!(long.label().chars().count() <= MAX_LABEL + 1);
    }
}
