//! Normalization and hashing of identifiers. Pure functions; per-platform rules live here too so
//! that they can be table-tested against the vendors' published examples.
//!
//! Each ad platform normalizes differently before hashing (docs/vendors/README.md §0.2, §0.3), so
//! there is one function per platform and identifier, and a hash made for one platform is never
//! sent to another. Every function returns `None` for input it cannot normalize; callers must then
//! send nothing for that identifier rather than a raw or half-normalized value.

use sha2::{Digest, Sha256};

/// Trim and lowercase: the normalization every platform agrees on for email addresses.
pub fn email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Lowercase hex SHA-256 of `input`.
pub fn sha256_hex(input: &str) -> String {
    hex(&Sha256::digest(input.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// The key under which the ledger may refer to an email: SHA-256 of the normalized address.
pub fn email_sha256(raw: &str) -> String {
    sha256_hex(&email(raw))
}

/// Meta (EMAIL / EMAIL_SHA256): trim and lowercase. Meta's own SDK also strips dots at either end
/// (`strip(" \t\r\n\0\x0B.")`), which no valid address has, so doing the same only makes our hashes
/// equal to the SDK's.
pub fn meta_email(raw: &str) -> Option<String> {
    let trimmed = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0' || c == '.');
    address(trimmed.to_lowercase())
}

/// Meta (PHONE / PHONE_SHA256): digits only, country code first, no `+`, no leading zeros.
pub fn meta_phone(raw: &str) -> Option<String> {
    international_digits(raw)
}

/// Google Data Manager (`emailAddress`): all whitespace removed, lowercase; for gmail.com and
/// googlemail.com every `.` before the `@` is removed and, when `remove_plus_suffix` is set, a
/// `+tag` too. Google's doc versions disagree on the `+tag` rule (docs/vendors/README.md §0.3),
/// hence the flag.
pub fn google_email(raw: &str, remove_plus_suffix: bool) -> Option<String> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let (local, domain) = compact.split_once('@')?;
    if domain != "gmail.com" && domain != "googlemail.com" {
        return address(compact.clone());
    }
    let local = if remove_plus_suffix {
        local.split('+').next().unwrap_or_default()
    } else {
        local
    };
    let local: String = local.chars().filter(|c| *c != '.').collect();
    address(format!("{local}@{domain}"))
}

/// The hashes under which Google knows an address ([`google_email`]): with the `+tag` kept, and
/// with it removed where that differs. Kept in the ledger so that reconcile can re-send removals
/// to Google, which normalizes gmail.com addresses differently from [`email_sha256`].
pub fn google_email_sha256s(raw: &str) -> Option<(String, Option<String>)> {
    let kept = google_email(raw, false)?;
    let removed = google_email(raw, true).filter(|r| *r != kept);
    Some((sha256_hex(&kept), removed.as_deref().map(sha256_hex)))
}

/// Google Data Manager (`phoneNumber`): E.164 with the `+`, e.g. `+18005550100`.
pub fn google_phone(raw: &str) -> Option<String> {
    international_digits(raw).map(|digits| format!("+{digits}"))
}

/// LinkedIn (`SHA256_EMAIL`): LinkedIn documents no rule beyond "HEX encoded string with length =
/// 64" (docs/vendors/linkedin.md §4), so the rule every platform agrees on: trim and lowercase.
pub fn linkedin_email(raw: &str) -> Option<String> {
    address(email(raw))
}

/// The generic hashed-audience contract (docs/vendors/generic-audience.md): trim and lowercase,
/// the rule every platform agrees on.
pub fn generic_email(raw: &str) -> Option<String> {
    address(email(raw))
}

/// X (`email`): "lowercase, remove leading and trailing spaces" (docs/vendors/x.md §5).
pub fn x_email(raw: &str) -> Option<String> {
    address(email(raw))
}

/// Mailchimp's member id ("subscriber hash"): lowercase hex MD5 of the lowercased address
/// (docs/vendors/mailchimp.md). Named here, not in the newsletter sink, because `ingest` reads
/// members by it too.
pub fn mailchimp_subscriber_hash(raw: &str) -> String {
    md5::Md5::digest(email(raw).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `normalized` if it still looks like an address: something on both sides of one `@`.
fn address(normalized: String) -> Option<String> {
    let (local, domain) = normalized.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@')).then_some(normalized)
}

/// The digits of an international number, country code first, without `+` and leading zeros.
///
/// Only a number written internationally (`+…` or `00…`) can be normalized: without that prefix
/// nothing tells a country code from an area code, and a wrong guess would hash another person's
/// number. Letters make the number unusable too: dropping them, as Meta suggests, would hash a
/// different number (`+1 800 FLOWERS`), so we send none rather than a wrong one.
fn international_digits(raw: &str) -> Option<String> {
    // "+49 (0)30 …": the "(0)" is the national trunk prefix, which is not dialled from abroad.
    let raw = raw.trim().replace("(0)", "");
    let rest = raw.strip_prefix('+').or_else(|| raw.strip_prefix("00"))?;
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '/' | '.'))
    {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    // E.164 allows at most 15 digits; no country code plus subscriber number is shorter than 7.
    (7..=15).contains(&digits.len()).then(|| digits.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(
            email("  Max.Mustermann@Example.DE \n"),
            "max.mustermann@example.de"
        );
    }

    #[test]
    fn sha256_matches_known_digest() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn email_hash_ignores_case_and_whitespace() {
        assert_eq!(email_sha256(" A@B.de"), email_sha256("a@b.de"));
    }

    fn hashed(normalized: Option<String>) -> String {
        sha256_hex(&normalized.expect("normalizes"))
    }

    // Golden values: each hash below is either quoted from the cited vendor source or, where the
    // vendor gives only the normalized form, computed with `printf '%s' <normalized> | sha256sum`.

    #[test]
    fn meta_email_golden() {
        // facebook/facebook-python-business-sdk, facebook_business/test/unit.py,
        // CustomAudienceTestCase.test_format_params: "  test  ", "test" and "..test.." all hash to
        // the SHA-256 of "test" under EMAIL_SHA256. (The SDK does not require an '@'; we do, so
        // the same padding is checked on an address.)
        assert_eq!(
            sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        for padded in ["  a@b.de  ", "a@b.de", "..a@b.de..", "\tA@B.DE\n"] {
            assert_eq!(meta_email(padded).as_deref(), Some("a@b.de"), "{padded:?}");
        }
        // "Trim leading, trail whitespace, and convert all characters to lowercase" (Meta's table,
        // docs/vendors/meta.md §2); sha256sum of "max.mustermann@example.de".
        assert_eq!(
            hashed(meta_email(" Max.Mustermann@Example.DE ")),
            "3b128ad4c64aa69af51af3b20b35d7e336ac6046bee10c6130cada27545d3e4a"
        );
    }

    #[test]
    fn meta_phone_golden() {
        // Meta Business Help Centre 2082575038703844 ("How to format a customer list") lists
        // "+44 844 412 4653" as an accepted phone; Meta's rule (docs/vendors/meta.md §2): "Remove
        // symbols, letters, and any leading zeroes", no '+'. sha256sum of "448444124653"; Snap's
        // Conversions API parameter docs publish the same digest for the same number.
        assert_eq!(
            meta_phone("+44 844 412 4653").as_deref(),
            Some("448444124653")
        );
        assert_eq!(
            hashed(meta_phone("+44 844 412 4653")),
            "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383"
        );
        // Salesforce help 000391108, quoting Meta: "447123456 and not +447123456".
        assert_eq!(meta_phone("+447123456").as_deref(), Some("447123456"));
        assert_eq!(
            hashed(meta_phone("+447123456")),
            "12613011a45be732100fe2fbfe390989778fbf1eb2052f86bb1379812768691c"
        );
    }

    #[test]
    fn phone_forms_we_accept_and_refuse() {
        for (raw, digits) in [
            ("+49 30 1234567", "49301234567"),
            ("+49 (0)30 123-4567", "49301234567"),
            ("0049 30 1234567", "49301234567"),
            ("+49 (30) 1234567", "49301234567"),
            (" +1 800/555.0100 ", "18005550100"),
        ] {
            assert_eq!(meta_phone(raw).as_deref(), Some(digits), "{raw:?}");
            assert_eq!(google_phone(raw), Some(format!("+{digits}")), "{raw:?}");
        }
        for raw in [
            "030 1234567",       // national: the country code is unknown
            "4930 1234567",      // no '+' or '00': is "49" a country code or an area code?
            "+1 800 FLOWERS",    // letters
            "+49 30 1234567 x2", // an extension
            "+12345",            // too short for any country
            "+1234567890123456", // longer than E.164 allows
            "+",
            "",
        ] {
            assert_eq!(meta_phone(raw), None, "{raw:?}");
            assert_eq!(google_phone(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn google_hashes_for_the_ledger_are_the_ones_the_sink_sends() {
        let raw = "Cloudy.SanFrancisco+shopping@gmail.com";
        let (kept, removed) = google_email_sha256s(raw).unwrap();
        assert_eq!(kept, hashed(google_email(raw, false)));
        assert_eq!(removed, Some(hashed(google_email(raw, true))));
        // Outside gmail.com, and for a gmail address without a +tag, one hash is all there is;
        // outside gmail.com it is the ledger's own.
        assert_eq!(
            google_email_sha256s(" Ines@Example.de "),
            Some((email_sha256(" Ines@Example.de "), None))
        );
        assert_eq!(google_email_sha256s("a.b@gmail.com").unwrap().1, None);
        assert_eq!(google_email_sha256s("no-at-sign"), None);
    }

    #[test]
    fn google_email_golden() {
        // googleads/data-manager-java, UserDataFormatterTest.testProcessEmailAddress_validInputs_
        // hexEncoding: every variant hashes to 509E9330… (Google's Java client prints hex in upper
        // case; the bytes are the same).
        for variant in [
            "alexz@example.com",
            "  alexz@example.com",
            "  ALEXZ@example.com   ",
            "  alexz@EXAMPLE.com   ",
        ] {
            assert_eq!(
                hashed(google_email(variant, true)),
                "509e933019bb285a134a9334b8bb679dff79d0ce023d529af4bd744d47b4fd8a",
                "{variant:?}"
            );
        }
        // https://developers.google.com/data-manager/api/devguides/concepts/formatting:
        // "cloudy.sanfrancisco+shopping@gmail.com → cloudysanfrancisco@gmail.com" and
        // "user.name+NYC@Example.com → user.name+nyc@example.com"; hashes by sha256sum.
        assert_eq!(
            google_email("cloudy.sanfrancisco+shopping@gmail.com", true).as_deref(),
            Some("cloudysanfrancisco@gmail.com")
        );
        assert_eq!(
            hashed(google_email("cloudy.sanfrancisco+shopping@gmail.com", true)),
            "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"
        );
        assert_eq!(
            hashed(google_email("user.name+NYC@Example.com", true)),
            "f109a2a632fbcea5fc82049f50beed3d8621bf9034399f437fb622222acccdac"
        );
        // data-manager-java UserDataFormatterTest.testFormatEmailAddress_gmailVariations.
        for (raw, normalized) in [
            (
                "j.e.f..ferson.Loves.hiking@gmail.com",
                "jeffersonloveshiking@gmail.com",
            ),
            (
                "jefferson.Loves.hiking@googlemail.com",
                "jeffersonloveshiking@googlemail.com",
            ),
            ("Jane.Doe+shopping@gmail.com", "janedoe@gmail.com"),
            ("Jane.Doe+shopping@googlemail.com", "janedoe@googlemail.com"),
        ] {
            assert_eq!(
                google_email(raw, true).as_deref(),
                Some(normalized),
                "{raw}"
            );
        }
        // The older doc versions (dots only) keep the tag.
        assert_eq!(
            google_email("Jane.Doe+shopping@gmail.com", false).as_deref(),
            Some("janedoe+shopping@gmail.com")
        );
        // "Remove leading, trailing, and intermediate whitespace" (same formatting page).
        assert_eq!(
            google_email(" alex z@example.com ", true).as_deref(),
            Some("alexz@example.com")
        );
        assert_eq!(google_email("no-at-sign", true), None);
        assert_eq!(google_email("+tag@gmail.com", true), None);
    }

    #[test]
    fn google_phone_golden() {
        // googleads/data-manager-java UserDataFormatterTest.testProcessPhoneNumber_validInputs_
        // hexEncoding ("+18005550100", "   +1-800-555-0100" → FB4F73A6…), and the formatting
        // page: "(800)555-0100 … normalized to +18005550100".
        for raw in ["+18005550100", "   +1-800-555-0100", "+1 (800) 555-0100"] {
            assert_eq!(
                google_phone(raw).as_deref(),
                Some("+18005550100"),
                "{raw:?}"
            );
            assert_eq!(
                hashed(google_phone(raw)),
                "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"
            );
        }
        // data-manager-java also lists "+44-113-496-0987" → "+441134960987".
        assert_eq!(
            google_phone("+44-113-496-0987").as_deref(),
            Some("+441134960987")
        );
    }

    #[test]
    fn linkedin_email_is_trimmed_lowercase() {
        // LinkedIn publishes no example (docs/vendors/linkedin.md §4, UNCONFIRMED rule): trim and
        // lowercase, hashed by sha256sum of "max.mustermann@example.de". Gmail dots are kept.
        assert_eq!(
            hashed(linkedin_email(" Max.Mustermann@Example.DE ")),
            "3b128ad4c64aa69af51af3b20b35d7e336ac6046bee10c6130cada27545d3e4a"
        );
        assert_eq!(
            linkedin_email("Jane.Doe+x@gmail.com").as_deref(),
            Some("jane.doe+x@gmail.com")
        );
        assert_eq!(linkedin_email("   "), None);
    }

    #[test]
    fn x_email_golden() {
        // https://developer.x.com/en/docs/x-ads-api/audiences/overview/user-data: SHA-256 without
        // salt, lowercase hex: hashlib.sha256("adsapi".encode()).hexdigest() ==
        // "49e0be2aeccfb51a8dee4c945c8a70a9ac500cf6f5cb08112575f74db9b1470d".
        assert_eq!(
            sha256_hex("adsapi"),
            "49e0be2aeccfb51a8dee4c945c8a70a9ac500cf6f5cb08112575f74db9b1470d"
        );
        // Same page, email: "lowercase, remove leading and trailing spaces".
        assert_eq!(
            hashed(x_email("  Max.Mustermann@Example.DE")),
            "3b128ad4c64aa69af51af3b20b35d7e336ac6046bee10c6130cada27545d3e4a"
        );
        assert_eq!(x_email("nobody"), None);
    }

    #[test]
    fn platforms_differ_where_their_rules_differ() {
        let raw = "Jane.Doe+news@GMail.com";
        let meta = meta_email(raw).unwrap();
        assert_eq!(meta, "jane.doe+news@gmail.com");
        assert_eq!(google_email(raw, true).unwrap(), "janedoe@gmail.com");
        assert_eq!(linkedin_email(raw).unwrap(), meta);
        assert_eq!(x_email(raw).unwrap(), meta);
        assert_ne!(meta_phone("+49 30 1234567"), google_phone("+49 30 1234567"));
    }
}
