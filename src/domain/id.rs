use rand::RngCore;

/// A task id: 24 lowercase hex characters, the first 12 a millisecond timestamp so ids sort
/// by creation time like the reference's, the last 12 random.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    pub fn generate() -> TaskId {
        let millis = chrono::Utc::now().timestamp_millis() as u64 & 0xffff_ffff_ffff;
        let mut random = [0u8; 6];
        rand::rng().fill_bytes(&mut random);
        TaskId(format!("{millis:012x}{}", hex::encode(random)))
    }

    /// Accepts only the canonical form, so a malformed id is a 404 without a database trip.
    pub fn parse(s: &str) -> Option<TaskId> {
        let ok = s.len() == 24
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| TaskId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_24_lowercase_hex_and_parse_back() {
        let id = TaskId::generate();
        assert_eq!(TaskId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.as_str().len(), 24);
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let a = TaskId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TaskId::generate();
        assert!(a < b);
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        for bad in [
            "",
            "576ba74eec471ff9b01557c",
            "576BA74EEC471FF9B01557CC",
            "576ba74eec471ff9b01557cz",
        ] {
            assert_eq!(TaskId::parse(bad), None, "{bad}");
        }
    }
}
