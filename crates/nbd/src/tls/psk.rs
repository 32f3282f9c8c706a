//! The pre-shared key file format of GnuTLS's `psktool`, which qemu-nbd and nbdkit read:
//! one `identity:hexkey` per line.

use std::collections::HashMap;

/// Longest identity accepted (OpenSSL's limit for a PSK identity).
pub const MAX_IDENTITY_LEN: usize = 128;
/// Longest key accepted, in bytes (OpenSSL's PSK_MAX_PSK_LEN is 512).
pub const MAX_KEY_LEN: usize = 256;

/// A line of a PSK file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct PskError {
    /// 1-based line number.
    pub line: usize,
    pub what: String,
}

/// Keys by identity.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PskTable {
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for PskTable {
    // Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("PskTable")
            .field("identities", &ids)
            .finish()
    }
}

impl PskTable {
    /// Parses a psktool file: `identity:hexkey` lines (CRLF endings too). Blank lines and
    /// lines starting with `#` are skipped. The identity is 1 to 128 bytes without `:`;
    /// the key an even number of hex digits, 1 to 256 bytes. An identity given twice is an
    /// error.
    pub fn parse(text: &str) -> Result<Self, PskError> {
        let mut keys = HashMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let err = |what: String| PskError { line, what };
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((id, hex)) = l.split_once(':') else {
                return Err(err("expected identity:hexkey (no ':' found)".into()));
            };
            if id.is_empty() {
                return Err(err("empty identity before ':'".into()));
            }
            if id.len() > MAX_IDENTITY_LEN {
                return Err(err(format!(
                    "identity is {} bytes; at most {MAX_IDENTITY_LEN} are allowed",
                    id.len()
                )));
            }
            let key = parse_hex(hex.trim_end()).map_err(err)?;
            if keys.insert(id.to_owned(), key).is_some() {
                return Err(err(format!("identity {id:?} given twice")));
            }
        }
        Ok(PskTable { keys })
    }

    pub fn get(&self, identity: &str) -> Option<&[u8]> {
        self.keys.get(identity).map(|k| &k[..])
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, identity: &str) -> bool {
        self.keys.contains_key(identity)
    }
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("empty key after ':' (expected hex digits)".into());
    }
    if let Some((pos, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "key has {c:?} at column {} after ':'; expected hex digits 0-9a-f",
            pos + 1
        ));
    }
    if !hex.len().is_multiple_of(2) {
        return Err(format!(
            "key has an odd number of hex digits ({}); each byte is two",
            hex.len()
        ));
    }
    if hex.len() / 2 > MAX_KEY_LEN {
        return Err(format!(
            "key is {} bytes; at most {MAX_KEY_LEN} are allowed",
            hex.len() / 2
        ));
    }
    Ok(hex
        .as_bytes()
        .chunks(2)
        .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
        .collect())
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_psktool_lines() {
        let t = PskTable::parse("alice:0123456789abcdef\r\n\n# comment\nbob:FF00\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.get("alice"),
            Some(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][..])
        );
        assert_eq!(t.get("bob"), Some(&[0xff, 0x00][..]));
        assert_eq!(t.get("carol"), None);
        // Keys never show in Debug output.
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn errors_name_the_line_and_the_fault() {
        let e = |s: &str| PskTable::parse(s).unwrap_err();
        assert_eq!(e("a:00\nnocolon\n").line, 2);
        assert!(e("nocolon").what.contains("identity:hexkey"));
        assert!(e(":00").what.contains("empty identity"));
        assert!(e("a:").what.contains("empty key"));
        let odd = e("a:abc");
        assert!(odd.what.contains("odd number"), "{odd}");
        let bad = e("\n\na:12zz");
        assert_eq!(bad.line, 3);
        assert!(bad.what.contains("'z' at column 3"), "{bad}");
        assert!(e("a:00\na:11").what.contains("given twice"));
        assert!(e(&format!("{}:00", "x".repeat(129)))
            .what
            .contains("at most 128"));
        assert!(e(&format!("a:{}", "00".repeat(257)))
            .what
            .contains("at most 256"));
        assert_eq!(
            e("a:00\nb:0x\n").to_string().split(':').next(),
            Some("line 2")
        );
    }

    #[test]
    fn empty_file_is_an_empty_table() {
        assert!(PskTable::parse("").unwrap().is_empty());
        assert!(PskTable::parse("\n# only a comment\n").unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = PskTable::parse(&s);
        }

        #[test]
        fn never_panics_on_near_valid_lines(
            lines in proptest::collection::vec("[a-z:#\r ]{0,4}[0-9a-fA-F:xz]{0,10}", 0..8)
        ) {
            let _ = PskTable::parse(&lines.join("\n"));
        }

        #[test]
        fn round_trips(keys in proptest::collection::hash_map(
            "[a-zA-Z0-9_.@-]{1,40}", proptest::collection::vec(any::<u8>(), 1..64), 0..8)
        ) {
            let text: String = keys
                .iter()
                .map(|(id, k)| {
                    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{id}:{hex}\n")
                })
                .collect();
            let t = PskTable::parse(&text).unwrap();
            prop_assert_eq!(t.len(), keys.len());
            for (id, k) in &keys {
                prop_assert_eq!(t.get(id), Some(&k[..]));
            }
        }
    }
}
