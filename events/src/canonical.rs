//! A one-pass check that a stored payload is already in canonical form, without building a
//! `serde_json::Value`: `verify` asks it of every event, and parsing each payload into a tree
//! only to write it out again and compare was a third of its work.
//!
//! It answers for sure only one way. `true` means that parsing the text and writing it with
//! [`crate::write_canonical_json`] gives back exactly the text. `false` means "not shown":
//! the caller takes the slow path, which also names what is wrong. So the check may refuse
//! what it does not model (escaped object keys, deep nesting) without ever being wrong.

/// Nesting beyond this is left to the slow path, which applies serde_json's own limit.
const MAX_DEPTH: usize = 100;

/// Whether `text` is certainly canonical JSON as this crate writes it: no whitespace, object
/// keys in strictly ascending byte order, strings escaped as serde_json escapes them, and
/// numbers as serde_json writes the value they parse to.
pub fn is_canonical_json(text: &str) -> bool {
    let mut at = Cursor {
        text: text.as_bytes(),
        i: 0,
    };
    at.value(0) && at.i == at.text.len()
}

struct Cursor<'t> {
    text: &'t [u8],
    i: usize,
}

impl<'t> Cursor<'t> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.text[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.eat(b'}') {
            return true;
        }
        let mut previous: Option<&'t [u8]> = None;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            // An escaped key's order is the order of what it decodes to: not modelled here.
            if key.contains(&b'\\') {
                return false;
            }
            // Rust orders strings by their bytes, as the canonical writer sorts them;
            // strictly, since a repeated key would be written once.
            if previous.is_some_and(|p| p >= key) {
                return false;
            }
            previous = Some(key);
            if !self.eat(b':') || !self.value(depth + 1) {
                return false;
            }
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    /// A string escaped exactly as serde_json escapes: `"` and `\` and the control
    /// characters, the five with short forms by them and the rest as `\u00xx` in lowercase
    /// hex; nothing else. Returns the text between the quotes.
    fn string(&mut self) -> Option<&'t [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        loop {
            let byte = self.peek()?;
            self.i += 1;
            match byte {
                b'"' => return Some(&self.text[start..self.i - 1]),
                b'\\' => {
                    let escape = self.peek()?;
                    self.i += 1;
                    match escape {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.text.get(self.i..self.i + 4)?;
                            self.i += 4;
                            let [b'0', b'0', high, low] = *hex else {
                                return None;
                            };
                            let code = lower_hex(high)? * 16 + lower_hex(low)?;
                            let has_short_form = matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d);
                            if code >= 0x20 || has_short_form {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                // Control characters are escaped; everything else (the text is UTF-8) is
                // written as it is.
                0x00..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// A number exactly as serde_json writes the value it parses to: an integer without
    /// leading zeros that fits both `u64` and `i64` (18 digits at most, to stay clear of
    /// either edge), or a float as serde_json writes its nearest `f64`.
    fn number(&mut self) -> bool {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        let token = &self.text[start..self.i];
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        if digits.iter().all(u8::is_ascii_digit) {
            // "-0" parses to the float -0.0, written "-0.0".
            let zero = digits == b"0" && digits.len() == token.len();
            let plain = !digits.is_empty() && digits[0] != b'0' && digits.len() <= 18;
            return zero || plain;
        }
        // Written back by serde_json itself, so the form is whatever its writer makes of
        // the value (the float formatter has changed between its releases).
        let Ok(token) = std::str::from_utf8(token) else {
            return false;
        };
        match serde_json::from_str::<serde_json::Value>(token) {
            Ok(number @ serde_json::Value::Number(_)) => {
                let mut written = Vec::with_capacity(token.len());
                crate::write_canonical_json(&number, &mut written);
                written == token.as_bytes()
            }
            _ => false,
        }
    }
}

fn lower_hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// What the slow path decides: the text parses and writes back to itself.
    fn canonical_the_slow_way(text: &str) -> bool {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let mut out = Vec::new();
        crate::write_canonical_json(&value, &mut out);
        out == text.as_bytes()
    }

    fn canonical_text(value: &Value) -> String {
        let mut out = Vec::new();
        crate::write_canonical_json(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_canonical_form_of_typical_payloads_is_recognised() {
        let values = [
            json!({}),
            json!([]),
            json!(null),
            json!({"b": 1, "a": [true, false, null], "c": {"z": -12, "y": 0}}),
            json!({"instruction": "Is this a \"cat\"?\n\tTab\\slash/ é 😀 \u{7f}", "n": 1.5}),
            json!({"ctl": "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}"}),
            json!({"f": [0.1, -2.5e-7, 1e300, 123456789.0, 1e21, 5e-324, -0.0, 1e-7]}),
            json!({"big": 999_999_999_999_999_999u64, "neg": -999_999_999_999_999_999i64}),
            json!({"": "empty key", "A": 1, "a": 2, "é": 3}),
        ];
        for value in values {
            let text = canonical_text(&value);
            assert!(is_canonical_json(&text), "{text}");
            assert!(canonical_the_slow_way(&text), "{text}");
        }
    }

    #[test]
    fn whatever_the_check_accepts_the_slow_path_accepts() {
        let cases = [
            "{\"a\":1}",
            "{\"a\": 1}",
            " {}",
            "{} ",
            "{\"b\":1,\"a\":2}",
            "{\"a\":1,\"a\":2}",
            "{\"a\":1,}",
            "[1,]",
            "[01]",
            "-0",
            "0",
            "-1",
            "1.0",
            "1.00",
            "1e2",
            "1E21",
            "1e21",
            "1e+21",
            "1e400",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "999999999999999999",
            "\"\\/\"",
            "\"\\u0041\"",
            "\"\\u001f\"",
            "\"\\u001F\"",
            "\"\\u000a\"",
            "\"\\n\"",
            "\"\\ud83d\\ude00\"",
            "\"\u{7f}\"",
            "\"a",
            "tru",
            "nul",
            "{\"\\u0061\":1}",
            "[[[[]]]]",
            "{\"a\":{\"b\":[{\"c\":\"d\"}]}}",
            "",
            "+1",
            "-",
            ".5",
            "0.5",
            "--1",
            "1-",
        ];
        for text in cases {
            if is_canonical_json(text) {
                assert!(canonical_the_slow_way(text), "accepted {text:?}");
            }
        }
        // The ones the check must not leave to the slow path for no reason.
        for text in [
            "0",
            "-1",
            "1.0",
            "0.5",
            "\"\\u001f\"",
            "\"\\n\"",
            "[[[[]]]]",
        ] {
            assert!(is_canonical_json(text), "{text:?}");
        }
    }

    /// Pins the escaping the check expects to the serde_json this build writes with: every
    /// ASCII character and a few wider ones, alone in a string, written canonically, is
    /// recognised, and the other ways of writing it are not.
    #[test]
    fn every_character_is_recognised_as_the_writer_escapes_it() {
        let wide = ['é', '\u{2028}', '\u{ffff}', '😀'];
        for c in (0u8..0x80).map(char::from).chain(wide) {
            let text = canonical_text(&json!(c.to_string()));
            assert!(is_canonical_json(&text), "{text:?}");
            for other in [
                format!("\"\\u{:04x}\"", u32::from(c)),
                format!("\"\\u{:04X}\"", u32::from(c)),
                format!("\"{c}\""),
            ] {
                if other != text {
                    assert!(!is_canonical_json(&other), "{other:?} for {text:?}");
                }
            }
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_left_to_the_slow_path() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert!(!is_canonical_json(&deep));
        let within = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(is_canonical_json(&within));
    }

    /// Random values written canonically are recognised; every one-byte change to them is
    /// either refused or still canonical the slow way.
    #[test]
    fn random_payloads_and_their_mutations_agree_with_the_slow_path() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let value = random_value(&mut next, 0);
            let text = canonical_text(&value);
            assert!(is_canonical_json(&text), "{text}");
            let bytes = text.as_bytes();
            for _ in 0..20 {
                let mut changed = bytes.to_vec();
                let at = (next() as usize) % changed.len();
                let replacements = b" ,:{}[]\"\\0-.e1aZ+";
                let replacement = replacements[(next() as usize) % replacements.len()];
                match next() % 3 {
                    0 => changed[at] = replacement,
                    1 => changed.insert(at, replacement),
                    _ => {
                        changed.remove(at);
                    }
                }
                let Ok(changed) = String::from_utf8(changed) else {
                    continue;
                };
                if is_canonical_json(&changed) {
                    assert!(canonical_the_slow_way(&changed), "accepted {changed:?}");
                }
            }
        }
    }

    /// Strings with every kind of character the writer escapes; keys without them, which
    /// the check leaves to the slow path.
    fn random_value(next: &mut impl FnMut() -> u64, depth: usize) -> Value {
        let text = |next: &mut dyn FnMut() -> u64, alphabet: &[&str]| -> String {
            (0..next() % 5)
                .map(|_| alphabet[(next() as usize) % alphabet.len()])
                .collect()
        };
        let values = ["a", "b", "Z", "\"", "\\", "\n", "\u{1}", "é", "/", " ", "0"];
        let keys = ["a", "b", "Z", "é", "/", " ", "0"];
        match next() % if depth > 3 { 5 } else { 7 } {
            0 => Value::Null,
            1 => Value::Bool(next().is_multiple_of(2)),
            2 => json!((next() % 2_000) as i64 - 1_000),
            3 => json!(f64::from_bits(next() % (1 << 62)) / 1e10),
            4 => Value::String(text(next, &values)),
            5 => Value::Array(
                (0..next() % 4)
                    .map(|_| random_value(next, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..next() % 4)
                    .map(|_| (text(next, &keys), random_value(next, depth + 1)))
                    .collect(),
            ),
        }
    }
}
