//! Fuzz target `client_hello`: arbitrary bytes as the first flight of a TLS
//! client, fed the way `proxy::handshake` feeds it.
//!
//! Input: one control byte, then the bytes from the client. The control
//! byte's low four bits pick the size of the pieces the bytes arrive in
//! (`n * n` bytes; 0: all at once), so one ClientHello is also tried split
//! across reads; its top bit picks the frontend: `unknownSni = "default"`
//! or `"alert"`.
//!
//! The frontends are real: certificates made once with rcgen (the
//! frontend's own for `own.test` and `*.own.test`, and `sni` entries for
//! the exact name `exact.test` and the wildcard `*.wild.test`), written to
//! files, named in a config text that `Config::parse` accepts, and read by
//! `lb::tls::FrontendTls::build` (lb's rustls `ServerConfig`, its SNI
//! resolver, session cache and ticketer) and `FrontendTls::read_certs`.
//!
//! The bytes go into `rustls::server::Acceptor`; when a ClientHello comes
//! out, lb's `SniResolver` picks the certificate for its SNI, and the
//! handshake goes on with lb's `ServerConfig` (the rest of the input is fed
//! to the connection).
//!
//! Must hold: no panic; the resolver picks the exact name's certificate for
//! `exact.test`, the wildcard's for one label under `wild.test`, the
//! frontend's own for the names it is valid for, else the default (or none
//! with `alert`); `ResolvesServerCert::resolve` agrees with `pick`.
#![no_main]

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use lb::{
    config::Config,
    tls::{certs::SniResolver, FrontendTls},
};
use libfuzzer_sys::fuzz_target;
use rustls::{
    server::{Acceptor, ResolvesServerCert as _},
    sign::CertifiedKey,
};
use rustls_pki_types::CertificateDer;

/// Which certificate a name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cert {
    Own,
    Exact,
    Wild,
}

/// One frontend: its TLS as `lb run` builds it, and its certificates read
/// once more into a resolver to question directly.
struct Frontend {
    tls: FrontendTls,
    resolver: SniResolver,
    alert: bool,
}

struct Setup {
    frontends: [Frontend; 2],
    /// Leaf certificates, to tell which one the resolver picked.
    leaves: Vec<(CertificateDer<'static>, Cert)>,
}

/// Writes a self-signed certificate for `names` as `dir/FILE.pem` and
/// `dir/FILE.key`; returns the two paths and the certificate.
fn make_cert(
    dir: &Path,
    file: &str,
    names: &[&str],
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("certificate names");
    let cert = params.self_signed(&key).expect("a certificate");
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write the certificate");
    // lb refuses a key that others can read.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&k)
        .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
        .expect("write the key");
    (c, k, cert.der().clone())
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lb-fuzz-hello-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let (own_c, own_k, own) = make_cert(&dir, "own", &["own.test", "*.own.test"]);
        let (exact_c, exact_k, exact) = make_cert(&dir, "exact", &["exact.test"]);
        let (wild_c, wild_k, wild) = make_cert(&dir, "wild", &["*.wild.test"]);
        let frontend = |unknown: &str| {
            let text = format!(
                r#"
[xdp]
mode = "off"
[[frontend]]
name = "tls"
listen = "127.0.0.1:8443"
pool = "web"
tls = {{ cert = "{}", key = "{}" }}
[frontend.tlsOptions]
sni = [
  {{ name = "exact.test", cert = "{}", key = "{}" }},
  {{ name = "*.wild.test", cert = "{}", key = "{}" }},
]
unknownSni = "{unknown}"
[[pool]]
name = "web"
backends = ["127.0.0.1:9"]
"#,
                own_c.display(),
                own_k.display(),
                exact_c.display(),
                exact_k.display(),
                wild_c.display(),
                wild_k.display(),
            );
            let cfg = Config::parse(&text, Path::new("client_hello.toml")).expect("the config");
            let f = &cfg.frontend[0];
            Frontend {
                tls: FrontendTls::build(f, None)
                    .expect("the frontend's TLS")
                    .expect("a TLS frontend"),
                resolver: FrontendTls::read_certs(f)
                    .expect("the certificates")
                    .expect("a TLS frontend"),
                alert: unknown == "alert",
            }
        };
        let frontends = [frontend("default"), frontend("alert")];
        // Everything is in memory now.
        let _ = std::fs::remove_dir_all(&dir);
        Setup {
            frontends,
            leaves: vec![(own, Cert::Own), (exact, Cert::Exact), (wild, Cert::Wild)],
        }
    })
}

impl Setup {
    fn which(&self, key: Option<&Arc<CertifiedKey>>) -> Option<Cert> {
        let leaf = key?.cert.first().expect("a chain has a leaf");
        let found = self.leaves.iter().find(|(der, _)| der == leaf);
        Some(found.expect("a certificate of ours").1)
    }
}

/// The certificate lb must pick for `sni` (the rules of `SniResolver`).
fn expected(sni: Option<&str>, alert: bool) -> Option<Cert> {
    let default = (!alert).then_some(Cert::Own);
    let Some(name) = sni.map(str::to_ascii_lowercase) else {
        return default;
    };
    if name == "exact.test" {
        return Some(Cert::Exact);
    }
    if name
        .split_once('.')
        .is_some_and(|(_, rest)| rest == "wild.test")
    {
        return Some(Cert::Wild);
    }
    // What webpki takes the own certificate to be valid for: `own.test`
    // and one label under it.
    let own = name == "own.test"
        || name
            .strip_suffix(".own.test")
            .is_some_and(|label| !label.is_empty() && !label.contains('.'));
    if own {
        return Some(Cert::Own);
    }
    default
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut input)) = data.split_first() else {
        return;
    };
    let s = setup();
    let f = &s.frontends[usize::from(control >> 7)];
    let piece = match usize::from(control & 0x0F) {
        0 => usize::MAX,
        n => n * n,
    };

    let mut acceptor = Acceptor::default();
    let accepted = loop {
        if input.is_empty() {
            return;
        }
        let mut rd = &input[..piece.min(input.len())];
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => return,
            Ok(n) => input = &input[n..],
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(a)) => break a,
            Err((_, mut alert)) => {
                let _ = alert.write_all(&mut Vec::new());
                return;
            }
        }
    };

    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let picked = f.resolver.pick(sni.as_deref());
    assert_eq!(
        s.which(picked.as_ref()),
        expected(sni.as_deref(), f.alert),
        "certificate for SNI {sni:?} (unknownSni alert: {})",
        f.alert
    );
    let resolved = f.resolver.resolve(hello);
    assert_eq!(
        s.which(resolved.as_ref()),
        s.which(picked.as_ref()),
        "resolve and pick disagree for {sni:?}"
    );

    // The handshake goes on with lb's ServerConfig, as `handshake::run`.
    lb::tls::take_resumption_offer();
    let conn = accepted.into_connection(Arc::clone(&f.tls.config));
    let _ = lb::tls::take_resumption_offer();
    let mut conn = match conn {
        Ok(c) => c,
        Err((_, mut alert)) => {
            let _ = alert.write_all(&mut Vec::new());
            return;
        }
    };
    let mut out = Vec::new();
    loop {
        while conn.wants_write() {
            if conn.write_tls(&mut out).is_err() {
                return;
            }
        }
        if input.is_empty() {
            return;
        }
        let mut rd = &input[..piece.min(input.len())];
        match conn.read_tls(&mut rd) {
            Ok(0) | Err(_) => return,
            Ok(n) => input = &input[n..],
        }
        if conn.process_new_packets().is_err() {
            let _ = conn.write_tls(&mut out);
            return;
        }
    }
});
