//! Sessions for `maxSessRate`. In HTTP mode a request that carries no valid
//! session cookie starts a new session: it is counted against the rate and,
//! when admitted, its response sets a cookie `lb_session=<expiry>.<mac>`.
//! The MAC is a keyed SipHash of the expiry, so a client cannot forge or
//! extend one; a cookie past its expiry is a new session again. The key
//! lives in the instance's run directory, so a `--join`ed process accepts
//! the cookies of the one it replaces; the instance's owner removes it when
//! it stops (cookies do not outlive the instance).

use std::{
    hash::Hasher as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use siphasher::sip::SipHasher13;

/// The cookie's name.
pub const COOKIE: &str = "lb_session";

/// How long a session lasts without a new cookie.
pub const LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Mints and checks session cookies.
#[derive(Clone)]
pub struct Sessions {
    key: [u8; 16],
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { key: <secret> }")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    /// With a given key.
    #[must_use]
    pub const fn with_key(key: [u8; 16]) -> Self {
        Self { key }
    }

    /// A random key of this process alone.
    #[must_use]
    pub fn random() -> Self {
        let mut key = [0u8; 16];
        let seed = std::collections::hash_map::RandomState::new();
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            let mut h = std::hash::BuildHasher::build_hasher(&seed);
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_ne_bytes());
        }
        Self::with_key(key)
    }

    /// The key in `path` (16 bytes), made (random, mode 0600) if missing.
    ///
    /// # Errors
    /// The file cannot be read or made.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let bytes = crate::instance::load_or_create_secret(
            path,
            |b| b.len() == 16,
            || {
                let mut key = vec![0u8; 16];
                std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
                Ok(key)
            },
        )?;
        let key = <[u8; 16]>::try_from(bytes.as_slice())
            .map_err(|_| std::io::Error::other("a session key is 16 bytes"))?;
        Ok(Self::with_key(key))
    }

    fn mac(&self, expiry: u64) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write_u64(expiry);
        h.finish()
    }

    /// A fresh cookie value, valid for [`LIFETIME`].
    #[must_use]
    pub fn mint(&self) -> String {
        let expiry = now_secs() + LIFETIME.as_secs();
        format!("{expiry:x}.{:016x}", self.mac(expiry))
    }

    /// Whether a cookie value is one of ours and not expired.
    #[must_use]
    pub fn valid(&self, value: &str) -> bool {
        let Some((e, m)) = value.split_once('.') else {
            return false;
        };
        // Exactly what `mint` writes: lower-case hex, a 16-digit MAC.
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if e.is_empty() || e.len() > 16 || m.len() != 16 || !hex(e) || !hex(m) || e.starts_with('0')
        {
            return false;
        }
        let (Ok(expiry), Ok(mac)) = (u64::from_str_radix(e, 16), u64::from_str_radix(m, 16)) else {
            return false;
        };
        expiry >= now_secs() && mac == self.mac(expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_cookies_are_valid_and_tampered_ones_are_not() {
        let s = Sessions::with_key([7; 16]);
        let c = s.mint();
        assert!(s.valid(&c));
        let (e, m) = c.split_once('.').expect("two parts");
        let later = u64::from_str_radix(e, 16).expect("hex") + 1000;
        assert!(!s.valid(&format!("{later:x}.{m}")), "extended expiry");
        assert!(!Sessions::with_key([8; 16]).valid(&c), "another key");
        assert!(!s.valid("garbage"));
        let past = now_secs() - 1;
        assert!(
            !s.valid(&format!("{past:x}.{:016x}", s.mac(past))),
            "expired"
        );
    }

    #[test]
    fn the_key_file_is_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("lb-sess-{}", std::process::id()));
        let path = dir.join("session.key");
        let a = Sessions::load_or_create(&path).expect("made");
        let b = Sessions::load_or_create(&path).expect("read");
        assert!(b.valid(&a.mint()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
