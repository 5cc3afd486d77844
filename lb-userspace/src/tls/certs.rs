//! Certificates: PEM files loaded into signing keys (each checked against
//! its certificate), and the SNI resolver that picks one per ClientHello:
//! an exact name first, then a `*.domain` wildcard (one label), then the
//! frontend's own certificate or nothing (`unknownSni = "alert"`: rustls
//! then ends the handshake with a fatal alert).

use std::{collections::HashMap, io::Read as _, path::Path, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::TlsError;

/// Loads a certificate chain and its private key, and checks they belong
/// together.
///
/// # Errors
/// A file is missing, unreadable, holds no PEM certificate or key, or the
/// key is not the certificate's.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_err = |path: &Path, what: &str| {
        let path = path.to_owned();
        let what = what.to_owned();
        move |e: rustls_pki_types::pem::Error| TlsError::File {
            path,
            what: format!("{what}: {e}"),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(file_err(cert, "reading a PEM certificate chain"))?
        .collect::<Result<_, _>>()
        .map_err(file_err(cert, "reading a PEM certificate chain"))?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.to_owned(),
            what: "no `BEGIN CERTIFICATE` block in it".into(),
        });
    }
    const READING_KEY: &str = "reading a PEM private key (PKCS#8, SEC1 or PKCS#1)";
    let pem = read_key_file(key).map_err(|e| match e {
        KeyFile::Open(e) => file_err(key, READING_KEY)(rustls_pki_types::pem::Error::Io(e)),
        KeyFile::Mode(mode) => TlsError::File {
            path: key.to_owned(),
            what: format!(
                "the private key is open to other users (mode {mode:04o}); allowed: no \
                 access for others, e.g. 0600, or 0640 with a group of its own \
                 (chmod o-rwx {})",
                key.display()
            ),
        },
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(file_err(key, READING_KEY))?;
    drop(pem);
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // The provider takes the DER and zeroes it when done (rustls wraps it
    // in `Zeroizing`); the key then lives in AWS-LC, which cleanses it when
    // freed.
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::File {
            path: key.to_owned(),
            what: format!("not a usable private key: {e}"),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        why: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

/// Why a private key file could not be read.
enum KeyFile {
    /// Opening or reading it failed.
    Open(std::io::Error),
    /// Others may read or write it (its permission bits).
    Mode(u32),
}

/// The text of the private key file at `path`, in a buffer zeroed when
/// dropped (read in one go, not through a `BufReader` whose buffer would
/// be freed unzeroed), after checking that other users cannot read it.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFile> {
    use std::os::unix::fs::MetadataExt as _;
    let mut file = std::fs::File::open(path).map_err(KeyFile::Open)?;
    let meta = file.metadata().map_err(KeyFile::Open)?;
    // A private key anyone on the host can read has leaked already.
    let mode = meta.mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(KeyFile::Mode(mode));
    }
    // `read_to_end` reserves the file's length before reading, so the
    // buffer does not grow (freeing a copy unzeroed) unless the file does.
    let mut pem = Zeroizing::new(Vec::with_capacity(
        usize::try_from(meta.len()).unwrap_or(0).min(1 << 20),
    ));
    file.read_to_end(&mut pem).map_err(KeyFile::Open)?;
    Ok(pem)
}

/// Picks the certificate for a ClientHello's SNI.
#[derive(Debug)]
pub struct SniResolver {
    /// Exact names, lower case.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.domain` patterns by `domain`, lower case.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The frontend's own certificate: served to the names it is valid for
    /// (its subject alternative names) after the `sni` entries.
    own: Option<Arc<CertifiedKey>>,
    /// For no SNI or no match; None: alert.
    default: Option<Arc<CertifiedKey>>,
}

/// Whether a certificate's leaf is valid for DNS name `name`.
fn valid_for(key: &CertifiedKey, name: &str) -> bool {
    let (Some(leaf), Ok(dns)) = (
        key.cert.first(),
        rustls_pki_types::ServerName::try_from(name),
    ) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&dns).is_ok())
}

impl SniResolver {
    /// A resolver over `(pattern, key)` pairs and a default.
    #[must_use]
    pub fn new(
        names: impl IntoIterator<Item = (String, Arc<CertifiedKey>)>,
        own: Option<Arc<CertifiedKey>>,
        default: Option<Arc<CertifiedKey>>,
    ) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (name, key) in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(domain) => wildcard.insert(domain.to_owned(), key),
                None => exact.insert(name, key),
            };
        }
        Self {
            exact,
            wildcard,
            own,
            default,
        }
    }

    /// The key for a server name (None: no SNI).
    #[must_use]
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(Arc::clone(k));
        }
        if let Some((_, domain)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(domain) {
                return Some(Arc::clone(k));
            }
        }
        if let Some(own) = self.own.as_ref().filter(|k| valid_for(k, &name)) {
            return Some(Arc::clone(own));
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A frontend's certificates, replaceable while it serves (SIGHUP): a
/// handshake takes whatever is in force when its ClientHello arrives;
/// established connections keep theirs.
#[derive(Debug)]
pub struct CertStore(std::sync::RwLock<Arc<SniResolver>>);

impl CertStore {
    /// A store holding `r`.
    #[must_use]
    pub fn new(r: SniResolver) -> Self {
        Self(std::sync::RwLock::new(Arc::new(r)))
    }

    /// Puts `r` in force.
    pub fn replace(&self, r: SniResolver) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(r);
    }

    fn current(&self) -> Arc<SniResolver> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().pick(hello.server_name())
    }
}

/// Writes a self-signed ECDSA P-256 certificate for `name` (and
/// `*.name`) to `dir/NAME.pem` and its key to `dir/NAME.key` (mode 0600):
/// `lb cert gen`, for tests and the demo.
///
/// # Errors
/// The name is not a DNS name, or a file cannot be written.
pub fn generate(
    name: &str,
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if !crate::config::tls::valid_sni_pattern(name) || name.starts_with("*.") {
        return Err(TlsError::Generate(format!(
            "`{name}` is not allowed; use a DNS name (letters, digits, `-`, `.`)"
        )));
    }
    // The key pair's DER is zeroed when dropped (rcgen's `zeroize`
    // feature); its AWS-LC key is cleansed when AWS-LC frees it.
    let key = Zeroizing::new(
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Generate(e.to_string()))?,
    );
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned(), format!("*.{name}")])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        path: dir.to_owned(),
        what: format!("creating the directory: {e}"),
    })?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| {
                // An existing file keeps its mode on open: set it.
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
                f.write_all(text.as_bytes())
            })
            .map_err(|e| TlsError::File {
                path: path.to_owned(),
                what: format!("writing: {e}"),
            })
    };
    write(&cert_path, &cert.pem(), 0o644)?;
    write(&key_path, &Zeroizing::new(key.serialize_pem()), 0o600)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> Arc<CertifiedKey> {
        let (c, k) = generate(name, dir).expect("generate");
        load(&c, &k).expect("load")
    }

    #[test]
    fn generated_pairs_load_and_a_mismatched_key_is_refused_naming_both_files() {
        let dir = std::env::temp_dir().join(format!("lb-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let _a = pair(&dir, "a.test");
        let _b = pair(&dir, "b.test");
        let err = load(&dir.join("a.test.pem"), &dir.join("b.test.key"))
            .expect_err("mismatch")
            .to_string();
        assert!(
            err.contains("a.test.pem") && err.contains("b.test.key"),
            "{err}"
        );
        let err = load(&dir.join("none.pem"), &dir.join("b.test.key"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("none.pem"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Neither the `Debug` of the loaded certificates nor an error about
    /// the key file shows the private key (its scalar in hex or as bytes,
    /// or its PEM text).
    #[test]
    fn debug_and_key_file_errors_never_show_the_private_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("lb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = generate("s.test", &dir).expect("generate");
        let pem = std::fs::read_to_string(&key).expect("read");
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("der");
        let der = der.secret_der();
        // ECPrivateKey: version 1, then the 32-byte scalar.
        let at = der
            .windows(5)
            .position(|w| w == [2, 1, 1, 4, 32])
            .expect("an EC private key")
            + 5;
        let scalar = &der[at..at + 32];
        let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
        let bytes = format!("{:?}", &scalar[..6]);
        let mut secret = vec![
            hex.clone(),
            hex.to_ascii_uppercase(),
            bytes.trim_matches(['[', ']']).to_owned(),
        ];
        secret.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(|l| l[..16].to_owned()),
        );
        let leaks = |what: &str, out: &str| {
            for s in &secret {
                assert!(
                    !out.contains(s.as_str()),
                    "{what} shows the key ({s}): {out}"
                );
            }
        };

        let ck = load(&cert, &key).expect("load");
        let r = SniResolver::new(
            [("s.test".to_owned(), Arc::clone(&ck))],
            Some(Arc::clone(&ck)),
            Some(Arc::clone(&ck)),
        );
        let store = CertStore::new(r);
        leaks("CertStore's Debug", &format!("{store:#?}"));
        leaks("CertifiedKey's Debug", &format!("{ck:?}"));

        // Open to others: refused, naming the file and the mode.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&cert, &key).expect_err("mode").to_string();
        assert!(err.contains("open to other users (mode 0644)"), "{err}");
        assert!(err.contains(&*key.to_string_lossy()), "{err}");
        leaks("a mode error", &err);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // Bad base64 in the key: the error names the file, not the key.
        let body = pem.lines().nth(1).expect("a body line");
        let broken = pem.replacen(body, &format!("{}!{}", &body[..20], &body[21..]), 1);
        std::fs::write(&key, broken).expect("write");
        let err = load(&cert, &key).expect_err("bad base64");
        let text = err.to_string();
        assert!(text.contains("reading a PEM private key"), "{text}");
        assert!(text.contains(&*key.to_string_lossy()), "{text}");
        leaks("a base64 error", &text);
        leaks("a base64 error's Debug", &format!("{err:?}"));
        // Missing: an I/O error naming the file.
        std::fs::remove_file(&key).expect("rm");
        let err = load(&cert, &key).expect_err("missing").to_string();
        assert!(
            err.contains("reading a PEM private key") && err.contains("I/O error"),
            "{err}"
        );
        assert!(err.contains(&*key.to_string_lossy()), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = std::env::temp_dir().join(format!("lb-sni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (d, e, w) = (
            pair(&dir, "d.test"),
            pair(&dir, "e.test"),
            pair(&dir, "w.test"),
        );
        let r = SniResolver::new(
            [
                ("api.e.test".to_owned(), Arc::clone(&e)),
                ("*.w.test".to_owned(), Arc::clone(&w)),
            ],
            Some(Arc::clone(&d)),
            Some(Arc::clone(&d)),
        );
        let is = |sni: Option<&str>, k: &Arc<CertifiedKey>| {
            r.pick(sni).is_some_and(|p| Arc::ptr_eq(&p, k))
        };
        assert!(is(Some("API.e.test"), &e));
        assert!(is(Some("x.w.test"), &w));
        assert!(is(Some("a.b.w.test"), &d), "a wildcard covers one label");
        assert!(is(None, &d));
        let strict = SniResolver::new([("api.e.test".to_owned(), e)], Some(Arc::clone(&d)), None);
        assert!(strict.pick(Some("other.test")).is_none());
        assert!(
            strict
                .pick(Some("d.test"))
                .is_some_and(|p| Arc::ptr_eq(&p, &d)),
            "the frontend's own certificate serves its own names"
        );
        assert!(strict.pick(Some("x.d.test")).is_some(), "and its *.d.test");
        let _ = std::fs::remove_dir_all(dir);
    }
}
