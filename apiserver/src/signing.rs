//! Signed download URLs: `HMAC-SHA256(key, "{file_id}\n{expires}")` in hex. Verification is
//! constant-time and accepts the current key and the one before it, so rotating the key
//! does not break URLs already handed out.
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest signing key accepted.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature does not match this file and expiry")]
    Invalid,
    #[error("this link has expired")]
    Expired,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} must be at least {MIN_KEY_BYTES} bytes long")]
pub struct WeakKey(pub &'static str);

#[derive(Clone)]
pub struct Signer {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

fn mac(key: &[u8], file_id: &str, expires: i64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(file_id.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

impl Signer {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Result<Self, WeakKey> {
        if current.len() < MIN_KEY_BYTES {
            return Err(WeakKey("SIGNING_KEY"));
        }
        if previous.is_some_and(|p| p.len() < MIN_KEY_BYTES) {
            return Err(WeakKey("SIGNING_KEY_PREVIOUS"));
        }
        Ok(Signer {
            current: current.to_vec(),
            previous: previous.map(<[u8]>::to_vec),
        })
    }

    /// A key that lives as long as the process (when none is configured).
    pub fn random() -> Self {
        Signer {
            current: rand::random::<[u8; 32]>().to_vec(),
            previous: None,
        }
    }

    /// The hex signature of a file id and an expiry (unix seconds).
    pub fn sign(&self, file_id: &str, expires: i64) -> String {
        hex::encode(mac(&self.current, file_id, expires).finalize().into_bytes())
    }

    /// Checks a signature against both keys, then the expiry against `now`.
    pub fn verify(
        &self,
        file_id: &str,
        expires: i64,
        signature_hex: &str,
        now: i64,
    ) -> Result<(), SignatureError> {
        let signature = hex::decode(signature_hex).map_err(|_| SignatureError::Invalid)?;
        let matches = |key: &[u8]| mac(key, file_id, expires).verify_slice(&signature).is_ok();
        // Both keys are always tried, so timing does not tell which one signed.
        let current = matches(&self.current);
        let previous = self.previous.as_deref().is_some_and(matches);
        if !(current | previous) {
            return Err(SignatureError::Invalid);
        }
        if expires < now {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    /// `{base}/v1/files/{id}/content?expires=..&signature=..`
    pub fn url(&self, base: &str, file_id: &str, expires: i64) -> String {
        format!(
            "{}/v1/files/{file_id}/content?expires={expires}&signature={}",
            base.trim_end_matches('/'),
            self.sign(file_id, expires)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef-current", None).unwrap()
    }

    #[test]
    fn a_signed_url_verifies_until_it_expires() {
        let s = signer();
        let sig = s.sign("file-abc", NOW + 60);
        assert_eq!(sig.len(), 64);
        assert_eq!(s.verify("file-abc", NOW + 60, &sig, NOW), Ok(()));
        assert_eq!(s.verify("file-abc", NOW + 60, &sig, NOW + 60), Ok(()));
        assert_eq!(
            s.verify("file-abc", NOW + 60, &sig, NOW + 61),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn changing_the_file_the_expiry_or_the_signature_is_refused() {
        let s = signer();
        let sig = s.sign("file-abc", NOW + 60);
        assert_eq!(
            s.verify("file-abd", NOW + 60, &sig, NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify("file-abc", NOW + 6000, &sig, NOW),
            Err(SignatureError::Invalid)
        );
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            s.verify("file-abc", NOW + 60, &flipped, NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify("file-abc", NOW + 60, "not hex", NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify("file-abc", NOW + 60, &sig[..32], NOW),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn an_expired_url_with_a_forged_expiry_is_invalid_not_expired() {
        let s = signer();
        let sig = s.sign("file-abc", NOW - 10);
        assert_eq!(
            s.verify("file-abc", NOW + 10, &sig, NOW),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn urls_signed_with_the_previous_key_survive_a_rotation() {
        let old = Signer::new(b"0123456789abcdef-old-key", None).unwrap();
        let sig = old.sign("file-abc", NOW + 60);
        let rotated = Signer::new(
            b"0123456789abcdef-new-key",
            Some(b"0123456789abcdef-old-key"),
        )
        .unwrap();
        assert_eq!(rotated.verify("file-abc", NOW + 60, &sig, NOW), Ok(()));
        assert_ne!(rotated.sign("file-abc", NOW + 60), sig);
        let forgotten = Signer::new(b"0123456789abcdef-new-key", None).unwrap();
        assert_eq!(
            forgotten.verify("file-abc", NOW + 60, &sig, NOW),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            Signer::new(b"short", None).unwrap_err(),
            WeakKey("SIGNING_KEY")
        );
        assert_eq!(
            Signer::new(b"0123456789abcdef", Some(b"x")).unwrap_err(),
            WeakKey("SIGNING_KEY_PREVIOUS")
        );
    }

    #[test]
    fn the_url_carries_the_id_expiry_and_signature() {
        let s = signer();
        let url = s.url("https://api.example/", "file-abc", NOW);
        assert_eq!(
            url,
            format!(
                "https://api.example/v1/files/file-abc/content?expires={NOW}&signature={}",
                s.sign("file-abc", NOW)
            )
        );
    }

    #[test]
    fn debug_output_does_not_show_the_keys() {
        let s = signer();
        assert!(!format!("{s:?}").contains("0123456789"));
    }
}
