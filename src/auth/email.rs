//! Email normalisation and a syntax check of the common address form
//! (`local@domain.tld`; no quoted local parts, no IP literals).

use crate::error::{AppError, AppResult};

pub const MAX_EMAIL_CHARS: usize = 254;
const MAX_LOCAL_CHARS: usize = 64;

/// Trims and lower-cases `raw`, then checks it. The result is the stored form,
/// so uniqueness is case-insensitive on both backends.
pub fn normalize(raw: &str) -> AppResult<String> {
    let email = raw.trim().to_lowercase();
    let invalid = || AppError::bad_input("email", "Email address is not valid");
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(AppError::bad_input(
            "email",
            format!("Email must be at most {MAX_EMAIL_CHARS} characters"),
        ));
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    if !valid_local(local) || !valid_domain(domain) {
        return Err(invalid());
    }
    Ok(email)
}

fn valid_local(local: &str) -> bool {
    let allowed = |c: char| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    !local.is_empty()
        && local.chars().count() <= MAX_LOCAL_CHARS
        && local.chars().all(allowed)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let valid_label = |label: &&str| {
        !label.is_empty()
            && label.chars().count() <= 63
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    labels.len() >= 2
        && labels.iter().all(valid_label)
        && labels
            .last()
            .is_some_and(|tld| tld.chars().count() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(normalize("  Alice@Example.COM ").ok().as_deref(), Some("alice@example.com"));
        assert_eq!(
            normalize("o'neil+tag@sub.example.co.uk").ok().as_deref(),
            Some("o'neil+tag@sub.example.co.uk")
        );
        assert_eq!(normalize("JOSÉ@exämple.de").ok().as_deref(), Some("josé@exämple.de"));
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@b .com",
            ".a@b.com",
            "a.@b.com",
            "a..b@c.com",
            "a@-b.com",
            "a@b-.com",
            "a@b..com",
            "a@1.2.3.4",
            "a@b.c",
            "a\u{0}@b.com",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
        assert!(normalize(&long).is_err());
        assert!(normalize(&format!("{}@example.com", "a".repeat(65))).is_err());
    }
}
