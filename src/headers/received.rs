//! Parsing one `Received:` header field (RFC 5321 §4.4 "Time-stamp-line") into
//! its clauses: `from`, `by`, `via`, `with`, `id`, `for`, the comments, and the
//! date after the last `;`.
//!
//! This module owns the tokenizer (words, nested comments, quoted strings) and
//! the clause walker. It must not interpret TLS stamps (that is `stamps`) and
//! must not fail: real `Received:` fields are often non-conforming, so every
//! clause is optional and whatever cannot be placed is kept in `extra`.
//! Work is linear in the input length whatever the input.

use std::net::IpAddr;

use serde::Serialize;

/// A token of a `Received:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A bare word (atoms, domains, `[ip]` literals, `<addr>`), or a quoted string.
    Word(String),
    /// The contents of a top-level comment, without the outer parentheses
    /// (nested comments are kept verbatim inside).
    Comment(String),
}

/// The clauses of one `Received:` field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Received {
    /// The whole field value, unfolded and with whitespace runs collapsed.
    pub raw: String,
    /// The `from` clause's host (as the sender announced it in HELO/EHLO, or
    /// as the receiver resolved it, depending on the server).
    pub from_host: Option<String>,
    /// The comment right after the `from` host (reverse DNS name and `[IP]` in
    /// most servers' formats).
    pub from_comment: Option<String>,
    /// The sending peer's IP address, when one is written in the `from` clause.
    pub from_ip: Option<String>,
    /// The `by` clause's host: the server that wrote this field.
    pub by_host: Option<String>,
    /// The `via` clause (link type), rarely used.
    pub via: Option<String>,
    /// The words of the `with` clause as written (`ESMTPS`, `Microsoft SMTP Server`).
    pub with: Option<String>,
    /// The `id` clause (queue id).
    pub id: Option<String>,
    /// The `for` clause (one recipient).
    pub for_addr: Option<String>,
    /// The text after the last `;` outside comments: the date, as written.
    pub date: Option<String>,
    /// Every top-level comment, in order (without the outer parentheses).
    pub comments: Vec<String>,
    /// Words that are not part of a known clause (Exim's `tls CIPHER` lands here).
    pub extra: Vec<String>,
}

/// Unfolds a header value (RFC 5322 §2.2.3) and collapses runs of whitespace
/// to one space; also trims. Invalid control bytes other than whitespace are kept.
pub fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut pending_space = false;
    for c in value.chars() {
        if c.is_whitespace() {
            pending_space = true;
        } else {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        }
    }
    out
}

/// Splits `s` into words and top-level comments. Unbalanced parentheses are
/// closed at the end of input; a stray `)` is treated as part of a word.
pub(crate) fn tokenize(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = s.chars();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if !word.is_empty() {
            tokens.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                flush(&mut word, &mut tokens);
                let mut depth = 1usize;
                let mut comment = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                comment.push(n);
                            }
                        }
                        '(' => {
                            depth += 1;
                            comment.push(c);
                        }
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                            comment.push(c);
                        }
                        _ => comment.push(c),
                    }
                }
                tokens.push(Token::Comment(comment.trim().to_string()));
            }
            '"' => {
                // A quoted string is one word, quotes kept.
                word.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        '"' => break,
                        _ => word.push(c),
                    }
                }
                word.push('"');
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

/// Finds the byte offset of the last `;` that is outside comments and quotes.
fn last_semicolon(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    let mut last = None;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ';' if !quoted && depth == 0 => last = Some(i),
            _ => {}
        }
    }
    last
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Clause {
    None,
    From,
    By,
    Via,
    With,
    Id,
    For,
}

fn keyword(word: &str) -> Option<Clause> {
    match word.to_ascii_lowercase().as_str() {
        "from" => Some(Clause::From),
        "by" => Some(Clause::By),
        "via" => Some(Clause::Via),
        "with" => Some(Clause::With),
        "id" => Some(Clause::Id),
        "for" => Some(Clause::For),
        _ => None,
    }
}

/// Extracts an IP address from a `from` host or comment: `[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`, `[192.0.2.1]:25`, or a bare address word (Exchange
/// writes `(10.0.0.5)`).
pub(crate) fn find_ip(text: &str) -> Option<String> {
    // Bracketed literals first.
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = rest.get(open + 1..)?;
        let close = after.find(']')?;
        let inner = after.get(..close)?;
        let inner = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
            .unwrap_or(inner);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Some(ip.to_string());
        }
        rest = after.get(close + 1..)?;
    }
    for w in text.split(|c: char| c.is_whitespace() || c == ',') {
        let w = w.trim_matches(|c: char| matches!(c, '(' | ')' | '"' | '.' | ';'));
        if let Ok(ip) = w.parse::<IpAddr>() {
            return Some(ip.to_string());
        }
    }
    None
}

/// Parses one `Received:` field value (folded or not). Never fails.
pub fn parse_received(value: &str) -> Received {
    let raw = unfold(value);
    let mut r = Received {
        raw: raw.clone(),
        ..Received::default()
    };
    let (clauses, date) = match last_semicolon(&raw) {
        Some(i) => (
            raw.get(..i).unwrap_or(""),
            raw.get(i + 1..).map(str::trim).filter(|d| !d.is_empty()),
        ),
        None => (raw.as_str(), None),
    };
    r.date = date.map(String::from);

    let mut clause = Clause::None;
    let mut with_words: Vec<String> = Vec::new();
    // Whether the current clause already took its value (`with` takes words
    // until a comment or keyword; the others take one word).
    let mut taken = false;
    for tok in tokenize(clauses) {
        match tok {
            Token::Comment(c) => {
                if clause == Clause::From && taken && r.from_comment.is_none() {
                    r.from_comment = Some(c.clone());
                }
                r.comments.push(c);
                if clause == Clause::With {
                    taken = true;
                }
            }
            Token::Word(w) => {
                if let Some(k) = keyword(&w) {
                    // `for` inside a `with` value is not expected; any keyword
                    // starts a new clause, but only the first of each kind counts.
                    clause = k;
                    taken = false;
                    continue;
                }
                let w = w.trim_end_matches(';').to_string();
                if taken || clause == Clause::None {
                    r.extra.push(w);
                    continue;
                }
                match clause {
                    Clause::With => {
                        // Only Exchange's `with Microsoft SMTP Server` has several
                        // words: read until a comment or keyword in that case.
                        let microsoft = with_words
                            .first()
                            .unwrap_or(&w)
                            .eq_ignore_ascii_case("Microsoft");
                        with_words.push(w);
                        taken = !microsoft;
                    }
                    Clause::From => {
                        r.from_host.get_or_insert(w);
                        taken = true;
                    }
                    Clause::By => {
                        r.by_host.get_or_insert(w);
                        taken = true;
                    }
                    Clause::Via => {
                        r.via.get_or_insert(w);
                        taken = true;
                    }
                    Clause::Id => {
                        r.id.get_or_insert(w);
                        taken = true;
                    }
                    Clause::For => {
                        r.for_addr.get_or_insert(w);
                        taken = true;
                    }
                    Clause::None => r.extra.push(w),
                }
            }
        }
    }
    if !with_words.is_empty() {
        r.with = Some(with_words.join(" "));
    }
    // The comment holds the address the receiver saw on the connection; the
    // host word is what the sender announced (`[192.168.1.20]` behind NAT).
    r.from_ip = r
        .from_comment
        .as_deref()
        .and_then(find_ip)
        .or_else(|| r.from_host.as_deref().and_then(find_ip));
    r
}

impl Received {
    /// The protocol named by the `with` clause, upper-cased: its first word
    /// (`ESMTPS`, `LMTP`, `HTTP`), or `MICROSOFT SMTP SERVER` for Exchange.
    pub fn protocol(&self) -> Option<String> {
        let with = self.with.as_deref()?;
        let up = with.to_ascii_uppercase();
        if up.starts_with("MICROSOFT") {
            return Some(up);
        }
        up.split_whitespace().next().map(String::from)
    }
}
