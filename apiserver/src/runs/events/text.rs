//! Output bytes as the text of deltas.

/// Turns output bytes into text without splitting a character across events: a character
/// cut at the end waits for its next bytes; invalid bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Text {
    carry: Vec<u8>,
}

impl Utf8Text {
    /// The text the bytes complete, and how many bytes it stands for.
    pub fn push(&mut self, bytes: &[u8]) -> (String, u64) {
        self.carry.extend_from_slice(bytes);
        let mut text = String::new();
        let mut used = 0usize;
        loop {
            match std::str::from_utf8(&self.carry[used..]) {
                Ok(s) => {
                    text.push_str(s);
                    used = self.carry.len();
                    break;
                }
                Err(e) => {
                    let valid = used + e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.carry[used..valid]).expect("valid"));
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            used = valid + n;
                        }
                        None => {
                            used = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.carry.drain(..used);
        (text, used as u64)
    }

    /// The end of the stream: bytes that never completed a character, as U+FFFD.
    pub fn finish(&mut self) -> (String, u64) {
        let rest = std::mem::take(&mut self.carry);
        (
            String::from_utf8_lossy(&rest).into_owned(),
            rest.len() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_never_splits_a_character_and_shows_invalid_bytes_as_replacements() {
        let mut t = Utf8Text::default();
        let e = "é".as_bytes();
        assert_eq!(t.push(&[b'a', e[0]]), ("a".to_string(), 1));
        assert_eq!(t.push(&[e[1], b'b']), ("éb".to_string(), 3));
        assert_eq!(t.push(b"\xff\xfex"), ("\u{FFFD}\u{FFFD}x".to_string(), 3));
        let mut whole = String::new();
        let mut t = Utf8Text::default();
        for b in "naïve ☃ text".as_bytes() {
            whole.push_str(&t.push(std::slice::from_ref(b)).0);
        }
        assert_eq!(whole, "naïve ☃ text");
    }

    #[test]
    fn a_character_cut_by_the_end_of_the_stream_is_a_replacement() {
        let mut t = Utf8Text::default();
        assert_eq!(t.push(&"☃".as_bytes()[..2]), (String::new(), 0));
        assert_eq!(t.finish(), ("\u{FFFD}".to_string(), 2));
        assert_eq!(t.finish(), (String::new(), 0));
    }
}
