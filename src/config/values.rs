//! The syntax of single values in the configuration file: names, paths, addresses, patterns,
//! durations, sizes and rates. Each parser takes the text as written and returns the value in
//! its one normal form, or the reason it is bad (a phrase the caller puts after the key).
//!
//! Every `format_*` function writes a value so that the matching parser reads it back to the
//! same value (the round trip that [`super::Config::to_toml`] relies on).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Whether `name` is a valid node or group name: non-empty, at most 253 characters, starting
/// with an ASCII letter or digit, and holding only ASCII letters, digits, `-`, `_` and `.`.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An absolute path without trailing slash, `.`, or empty components; `..` is refused
/// (it cannot be resolved without looking at the filesystem).
pub fn normalise_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if !raw.starts_with('/') {
        return Err("not an absolute path (it must start with /)".to_owned());
    }
    if raw.contains('\0') {
        return Err("the path contains a NUL character".to_owned());
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err("\"..\" is not allowed in a path; write the path without it".to_owned());
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `host:port` from `host`, `host:port`, `ip4`, `ip4:port`, `ip6`, `[ip6]`, `[ip6]:port`.
/// Without `default_port`, the port must be given.
pub fn normalise_address(raw: &str, default_port: Option<u16>) -> Result<String, String> {
    if raw.is_empty() {
        return Err("the address is empty".to_owned());
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".to_owned());
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".to_owned());
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{inside:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None => {
                    return Err(format!(
                        "unexpected {after:?} after ']' (write [ADDR]:PORT)"
                    ));
                }
            },
        };
        (format!("[{inside}]"), port)
    } else if raw.parse::<Ipv6Addr>().is_ok() {
        (format!("[{raw}]"), None)
    } else {
        let (host, port) = match raw.rsplit_once(':') {
            Some((host, p)) => (host, Some(parse_port(p)?)),
            None => (raw, None),
        };
        if host.contains(':') {
            return Err("write an IPv6 address with a port as [ADDR]:PORT".to_owned());
        }
        check_host(host)?;
        (host.to_owned(), port)
    };
    match port.or(default_port) {
        Some(port) => Ok(format!("{host}:{port}")),
        None => Err("it needs a port, e.g. 127.0.0.1:9373".to_owned()),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!(
            "bad port {p:?} (a port is a number from 1 to 65535)"
        )),
    }
}

/// Whether `host` is a valid host name or IPv4 address, as the host part of an address.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{host:?} is not an IPv4 address")),
        };
    }
    let ok = host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a valid host name or IP address"))
    }
}

/// Compiles a gitignore-style glob; the reason it is bad, if it is.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("the pattern is empty".to_owned());
    }
    if pattern.starts_with('#') {
        return Err(
            "a pattern starting with '#' is a comment in gitignore syntax; write \\# to match a \
                    literal '#'"
                .to_owned(),
        );
    }
    let mut builder = ignore::gitignore::GitignoreBuilder::new("/");
    // Git takes an unclosed '[' literally; in a config file it is far more likely a typo, so
    // it is refused here (`\[` matches a literal '[').
    builder.allow_unclosed_class(false);
    match builder.add_line(None, pattern) {
        Ok(_) => {}
        Err(ignore::Error::Glob { err, .. }) => return Err(err),
        Err(other) => return Err(other.to_string()),
    }
    builder.build().map(|_| ()).map_err(|e| e.to_string())
}

/// A duration as humantime writes it (`"500ms"`, `"10s"`, `"1h 30m"`); `Ok(None)` for `"0"`
/// (or any zero duration) when `zero_disables`.
pub fn parse_duration(raw: &str, zero_disables: bool) -> Result<Option<Duration>, String> {
    let text = raw.trim();
    if zero_disables && text == "0" {
        return Ok(None);
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() && zero_disables => Ok(None),
        Ok(d) if d.is_zero() => Err("it must be more than 0".to_owned()),
        Ok(d) => Ok(Some(d)),
        Err(why) => Err(why.to_string()),
    }
}

/// A duration written so that [`parse_duration`] reads it back exactly.
pub fn format_duration(d: Duration) -> String {
    let human = humantime::format_duration(d).to_string();
    if humantime::parse_duration(&human).ok() == Some(d) {
        return human;
    }
    // Very long durations: humantime's years and months do not always read back exactly.
    match d.subsec_nanos() {
        0 => format!("{}s", d.as_secs()),
        n => format!("{}s {n}ns", d.as_secs()),
    }
}

/// Byte units: name, factor. Decimal units take a `k`/`K`, `M`, `G` or `T` before `B`;
/// binary ones end in `iB`, any case.
const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// A number of bytes: `"0"`, `"4096"`, `"500MB"`, `"10GiB"`, `"1.5 KiB"`. Decimal units
/// (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB) powers of 1024.
/// A lower-case `b` (bits, as in `Mb`) is refused rather than guessed.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err("it needs a number, e.g. \"500MB\" or \"10GiB\"".to_owned());
    }
    let factor = if unit.is_empty() {
        1
    } else {
        if unit.ends_with('b') && !unit.to_ascii_lowercase().ends_with("ib") {
            return Err(format!(
                "{unit:?} would be bits; write the size in bytes, e.g. \"{number}MB\" or \"{number}MiB\""
            ));
        }
        let lower = unit.to_ascii_lowercase();
        match UNITS.iter().find(|(name, _)| *name == lower) {
            Some((_, f)) => *f,
            None => {
                return Err(format!(
                    "unknown unit {unit:?}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
                ));
            }
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!("{number:?} is not a number"));
    }
    let too_large = || "it is too large".to_owned();
    let digits = format!("{whole}{fraction}");
    let scaled: u128 = digits.parse().map_err(|_| too_large())?;
    let divisor = 10u128
        .checked_pow(u32::try_from(fraction.len()).map_err(|_| too_large())?)
        .ok_or_else(too_large)?;
    let bytes = scaled
        .checked_mul(u128::from(factor))
        .ok_or_else(too_large)?
        / divisor;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// A size written so that [`parse_size`] reads it back exactly: in the largest binary unit
/// that divides it, else in bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, factor) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

/// A limit as written in the file: `"0"` is none (`Ok(None)`), otherwise a size.
pub fn parse_limit(raw: &str) -> Result<Option<u64>, String> {
    match parse_size(raw)? {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// A transfer rate, bytes per second: `"0"` is none (`Ok(None)`), otherwise a size followed by
/// `/s`, e.g. `"20MiB/s"`, `"500KiB/s"`, `"10MB/s"`.
pub fn parse_rate(raw: &str) -> Result<Option<u64>, String> {
    let text = raw.trim();
    if text == "0" {
        return Ok(None);
    }
    let Some(size) = text.strip_suffix("/s") else {
        return Err(
            "a rate is a size per second, e.g. \"20MiB/s\" or \"500KiB/s\" (\"0\" for no limit)"
                .to_owned(),
        );
    };
    parse_limit(size)
}

/// A rate written so that [`parse_rate`] reads it back exactly.
pub fn format_rate(bytes_per_second: Option<u64>) -> String {
    match bytes_per_second {
        None => "0".to_owned(),
        Some(n) => format!("{}/s", format_size(n)),
    }
}

/// The valid key nearest to a misspelt one, if it is near enough to be a likely typo.
pub fn closest<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .filter(|(d, v)| *d <= (v.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Optimal string alignment distance (Levenshtein with adjacent transpositions).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Whether path `child` is `parent` or lies inside it (both normalised).
pub fn inside(parent: &str, child: &str) -> bool {
    parent == "/"
        || child == parent
        || (child.starts_with(parent) && child.as_bytes().get(parent.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (raw, want) in [
            ("0", 0),
            ("4096", 4096),
            ("10B", 10),
            ("500MB", 500_000_000),
            ("500 MB", 500_000_000),
            ("10GiB", 10 << 30),
            ("1.5KiB", 1536),
            ("2kB", 2000),
            ("2KB", 2000),
            ("1mib", 1 << 20),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(parse_size(raw), Ok(want), "{raw}");
        }
        for (raw, why) in [
            ("", "needs a number"),
            ("MB", "needs a number"),
            ("10Mb", "bits"),
            ("10 parsecs", "unknown unit"),
            ("1.2.3MB", "not a number"),
            ("1.MB", "not a number"),
            ("99999999999999999999TiB", "too large"),
            ("-1MB", "needs a number"),
        ] {
            let e = parse_size(raw).unwrap_err();
            assert!(e.contains(why), "{raw}: {e}");
        }
        for n in [0, 1, 1023, 1024, 1536, 1 << 20, 3 << 30, (5 << 40) + 1] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_size(20 << 20), "20MiB");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("0MiB/s"), Ok(None));
        assert_eq!(parse_rate("20MiB/s"), Ok(Some(20 << 20)));
        assert_eq!(parse_rate("500KiB/s"), Ok(Some(500 << 10)));
        assert_eq!(parse_rate("10MB/s"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate("1GiB/s"), Ok(Some(1 << 30)));
        assert!(parse_rate("20MiB").unwrap_err().contains("per second"));
        assert!(parse_rate("fast/s").unwrap_err().contains("needs a number"));
        for r in [None, Some(1), Some(20 << 20), Some(10_000_000)] {
            assert_eq!(parse_rate(&format_rate(r)), Ok(r));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0", true), Ok(None));
        assert_eq!(parse_duration("0s", true), Ok(None));
        assert!(
            parse_duration("0s", false)
                .unwrap_err()
                .contains("more than 0")
        );
        assert_eq!(
            parse_duration("1m 30s", false),
            Ok(Some(Duration::from_secs(90)))
        );
        for d in [1u64, 500, 60_000, 3_723_004] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d), false), Ok(Some(d)));
        }
        for d in [
            Duration::new(u64::MAX, 999_999_999),
            Duration::new(u64::MAX / 3, 1),
            Duration::from_secs(400 * 365 * 86400 + 7),
        ] {
            assert_eq!(
                parse_duration(&format_duration(d), false),
                Ok(Some(d)),
                "{d:?}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }
}
