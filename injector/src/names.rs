//! Kubernetes' rules for the names the injector writes or reads: label keys, DNS-1123 labels
//! and subdomains (containers, volumes, Secrets), env var names. Checked before a pod or the
//! configuration is accepted, so the API server never rejects what the injector produced.

/// Checks a Kubernetes label key (`[prefix/]name`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|e| format!("{key:?}: its prefix {e}"))?;
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!("{key:?} is not a label key ([prefix/]name, name at most 63 characters of letters, digits, '-', '_', '.', starting and ending alphanumeric)"))
    }
}

/// Checks a DNS-1123 label (container and volume names).
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.len() <= 63 && is_label(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS-1123 label (at most 63 lower-case letters, digits and '-', not starting or ending with '-')"))
    }
}

/// Whether `part` is made like a DNS-1123 label (lower-case letters, digits and '-', not
/// starting or ending with '-'), whatever its length: a subdomain's parts have no bound of their
/// own.
fn is_label(part: &str) -> bool {
    !part.is_empty()
        && part.bytes().all(is_label_byte)
        && !part.starts_with('-')
        && !part.ends_with('-')
}

/// Whether `b` may stand in a DNS-1123 label: a lower-case letter, a digit or '-'.
pub(crate) fn is_label_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// Checks a DNS-1123 subdomain (Secret names, label prefixes).
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() <= 253 && name.split('.').all(is_label) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253)"))
    }
}

/// Checks an env var name the way Kubernetes 1.30 does (`[-._a-zA-Z][-._a-zA-Z0-9]*`).
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b"-._".contains(&b))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid env var name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kubernetes_accepts_and_refuses() {
        for good in ["flyte.org/auth-agent", "app", "a.b-c_d", "example.com/X_y"] {
            assert!(check_label_key(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "-a", "a/", "Example.com/x", &"x".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        for good in ["flyte-auth-agent", "a", "a1"] {
            assert!(check_dns_label(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "a.b", "-a", "a-", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
        for good in ["flyte-secret-auth", "a.b.c"] {
            assert!(check_dns_subdomain(good).is_ok(), "{good}");
        }
        for bad in ["", "My_Secret", "a..b", ".a", &"a".repeat(254)] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad}");
        }
        for good in ["_FSEC_GROUP_KEY", "A-B.c", "x"] {
            assert!(check_env_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A=B", "A B"] {
            assert!(check_env_name(bad).is_err(), "{bad}");
        }
    }
}
