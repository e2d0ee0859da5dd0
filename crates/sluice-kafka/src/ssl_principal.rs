//! Who a client of an `SSL` listener is: the subject of its certificate,
//! mapped by Kafka's `ssl.principal.mapping.rules`.
//!
//! The rules are a list separated by commas or new lines, tried in order;
//! the first that matches the whole distinguished name decides:
//! - `DEFAULT`: the distinguished name itself;
//! - `RULE:pattern/replacement/` with an optional `L` or `U` after the
//!   last slash (lower or upper case): the name the replacement makes of
//!   the pattern's groups (`$1`). A `/` inside the pattern or the
//!   replacement is written `\/`.
//!
//! A name no rule matches is refused, as Kafka refuses it.

use regex::Regex;

/// The parsed rules.
#[derive(Debug, Clone)]
pub struct PrincipalRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Replace {
        pattern: Regex,
        replacement: String,
        case: Case,
    },
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Keep,
    Lower,
    Upper,
}

impl Default for PrincipalRules {
    fn default() -> Self {
        PrincipalRules {
            rules: vec![Rule::Default],
        }
    }
}

impl PrincipalRules {
    /// Parses Kafka's rule syntax.
    ///
    /// # Errors
    /// What is wrong, and where.
    pub fn parse(text: &str) -> Result<PrincipalRules, String> {
        let mut rules = Vec::new();
        let mut rest = text.trim_start_matches(is_separator);
        while !rest.is_empty() {
            let (rule, after) = if let Some(after) = rest.strip_prefix("DEFAULT") {
                (Rule::Default, after)
            } else if let Some(after) = rest.strip_prefix("RULE:") {
                let (pattern, after) = until_slash(after)
                    .ok_or_else(|| format!("the rule {rest:?} has no / after its pattern"))?;
                let (replacement, after) = until_slash(after)
                    .ok_or_else(|| format!("the rule {rest:?} has no / after its replacement"))?;
                let (case, after) = match after.as_bytes().first() {
                    Some(b'L') => (Case::Lower, &after[1..]),
                    Some(b'U') => (Case::Upper, &after[1..]),
                    _ => (Case::Keep, after),
                };
                // The bare pattern first: one like `a)|(b` must not pass
                // for a whole one inside the anchors.
                let refused = |e: regex::Error| {
                    format!("the pattern {pattern:?} is not a regular expression: {e}")
                };
                let groups = Regex::new(&pattern).map_err(refused)?.captures_len() - 1;
                let anchored = Regex::new(&format!("^(?:{pattern})$")).map_err(refused)?;
                (
                    Rule::Replace {
                        pattern: anchored,
                        replacement: braced_groups(&replacement, groups)?,
                        case,
                    },
                    after,
                )
            } else {
                return Err(format!(
                    "expected DEFAULT or RULE:pattern/replacement/[LU] at {rest:?}"
                ));
            };
            let after = after.trim_start_matches([' ', '\t']);
            if !after.is_empty() && !after.starts_with(is_separator) {
                return Err(format!("unexpected {after:?} after a rule"));
            }
            rules.push(rule);
            rest = after.trim_start_matches(is_separator);
        }
        if rules.is_empty() {
            return Err("no rules (DEFAULT keeps the distinguished name)".to_owned());
        }
        Ok(PrincipalRules { rules })
    }

    /// The principal's name for the distinguished name `subject`; `None`
    /// when no rule matches.
    pub fn map(&self, subject: &str) -> Option<String> {
        self.rules.iter().find_map(|rule| match rule {
            Rule::Default => Some(subject.to_owned()),
            Rule::Replace {
                pattern,
                replacement,
                case,
            } => {
                let captures = pattern.captures(subject)?;
                let mut name = String::new();
                captures.expand(replacement, &mut name);
                Some(match case {
                    Case::Keep => name,
                    Case::Lower => name.to_lowercase(),
                    Case::Upper => name.to_uppercase(),
                })
            }
        })
    }
}

fn is_separator(c: char) -> bool {
    matches!(c, ',' | '\n' | '\r' | ' ' | '\t')
}

/// The text up to the first `/` that no backslash escapes, with `\/`
/// made `/` (other escapes kept for the regular expression), and what
/// follows that slash.
fn until_slash(text: &str) -> Option<(String, &str)> {
    let mut part = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, '/')) => part.push('/'),
                Some((_, escaped)) => {
                    part.push('\\');
                    part.push(escaped);
                }
                None => part.push('\\'),
            },
            '/' => return Some((part, &text[at + 1..])),
            _ => part.push(c),
        }
    }
    None
}

/// A Java replacement (`Matcher.replaceAll`'s) in the regex crate's
/// syntax, for a pattern of `groups` groups: `$12` is group 12 if there
/// is one, else group 1 then `2`, as in Java; `${name}` names a group;
/// `\x` is `x`.
///
/// # Errors
/// A group the pattern does not have, or a `$` naming nothing.
fn braced_groups(replacement: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {
                    return Err(format!(
                        "the replacement {replacement:?} ends in a backslash"
                    ));
                }
            },
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut group = 0usize;
                let mut read = 0;
                while let Some(digit) = chars.peek().and_then(|d| d.to_digit(10)) {
                    let longer = group * 10 + digit as usize;
                    if read > 0 && longer > groups {
                        break;
                    }
                    group = longer;
                    read += 1;
                    chars.next();
                }
                if group > groups {
                    return Err(format!(
                        "the replacement {replacement:?} names group {group}; the pattern has {groups}"
                    ));
                }
                out.push_str(&format!("${{{group}}}"));
            }
            '$' if chars.peek() == Some(&'{') => {
                out.push('$');
                for named in chars.by_ref() {
                    out.push(named);
                    if named == '}' {
                        break;
                    }
                }
            }
            '$' => {
                return Err(format!(
                    "the replacement {replacement:?} has a $ naming no group"
                ));
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keeps_the_distinguished_name() {
        let rules = PrincipalRules::parse("DEFAULT").expect("parses");
        assert_eq!(
            rules.map("CN=alice,O=Example").as_deref(),
            Some("CN=alice,O=Example")
        );
    }

    #[test]
    fn rules_are_tried_in_order_and_the_first_match_decides() {
        // The examples of Kafka's documentation.
        let rules = PrincipalRules::parse(
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,\n RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L,\
             RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L, DEFAULT",
        )
        .expect("parses");
        assert_eq!(
            rules
                .map("CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown")
                .as_deref(),
            Some("serviceuser")
        );
        assert_eq!(
            rules
                .map("CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown")
                .as_deref(),
            Some("adminuser@admin")
        );
        assert_eq!(
            rules.map("OU=Other,CN=Bob.Smith,O=X").as_deref(),
            Some("bob.smith")
        );
        assert_eq!(rules.map("O=Nobody").as_deref(), Some("O=Nobody"));
    }

    #[test]
    fn upper_case_escaped_slashes_and_no_match() {
        let rules = PrincipalRules::parse(r"RULE:^CN=([^,]*)\/x,.*$/a\/$1/U").expect("parses");
        assert_eq!(rules.map("CN=bob/x,O=Y").as_deref(), Some("A/BOB"));
        assert_eq!(rules.map("CN=bob,O=Y"), None, "no rule matches");
        // $1 followed by letters still names group 1.
        let rules = PrincipalRules::parse("RULE:^CN=([^,]*).*$/$1abc/").expect("parses");
        assert_eq!(rules.map("CN=bob,O=Y").as_deref(), Some("bobabc"));
    }

    #[test]
    fn groups_escapes_and_slashes_read_as_java_and_kafka_read_them() {
        // $12 with one group: group 1, then "2".
        let rules = PrincipalRules::parse("RULE:^CN=([^,]*),.*$/$12/").expect("parses");
        assert_eq!(rules.map("CN=bob,O=Y").as_deref(), Some("bob2"));
        // A named group, an escaped dollar, an escaped backslash before an
        // escaped slash.
        let rules =
            PrincipalRules::parse(r"RULE:^CN=(?P<cn>[^,]*),O=a\\\/b$/${cn}\$/").expect("parses");
        assert_eq!(rules.map(r"CN=bob,O=a\/b").as_deref(), Some("bob$"));
    }

    #[test]
    fn malformed_rules_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "no rules"),
            ("RULE:^CN=(.*)$", "no / after its pattern"),
            ("RULE:^CN=(.*)$/$1", "no / after its replacement"),
            ("RULE:^CN=((.*)$/$1/", "not a regular expression"),
            ("RULE:a)|(b/$1/", "not a regular expression"),
            ("RULE:^CN=(.*)$/$2/", "names group 2"),
            ("RULE:^CN=(.*)$/$x/", "naming no group"),
            ("NOPE", "expected DEFAULT"),
            ("DEFAULTX", "unexpected"),
        ] {
            let error = PrincipalRules::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
