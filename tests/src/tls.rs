//! A rustls client side for tests and benchmarks that talk to `lb` and its
//! peers with self-signed certificates.

use std::sync::{Arc, Mutex};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{aws_lc_rs as provider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

/// Accepts any certificate (the tests' are self-signed: they test limits
/// and speed, not trust). With `check`, the handshake signature is still
/// verified and its scheme remembered; without, the client skips that
/// work, which is the client's, not the server's.
#[derive(Debug)]
pub struct AnyCert {
    check: bool,
    algs: WebPkiSupportedAlgorithms,
    scheme: Mutex<Option<SignatureScheme>>,
}

/// An [`AnyCert`], checking signatures or not.
#[must_use]
pub fn any_cert(check: bool) -> Arc<AnyCert> {
    Arc::new(AnyCert {
        check,
        algs: provider::default_provider().signature_verification_algorithms,
        scheme: Mutex::new(None),
    })
}

impl AnyCert {
    /// The TLS 1.3 signature scheme of the last handshake checked.
    #[must_use]
    pub fn scheme(&self) -> Option<SignatureScheme> {
        self.scheme.lock().ok().and_then(|s| *s)
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check {
            return Ok(HandshakeSignatureValid::assertion());
        }
        if let Ok(mut s) = self.scheme.lock() {
            *s = Some(dss.scheme);
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
