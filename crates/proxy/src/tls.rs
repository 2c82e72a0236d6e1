//! TLS termination: the rustls server config of a listener, built once per
//! snapshot from the certificates `check` already read and verified, and
//! the SNI resolver that picks among them.

use std::sync::Arc;

use fulcrum_config::snapshot::{Certificate, Tls, TlsVersion};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The acceptor for one listener: TLS 1.2+ (or 1.3 only), ALPN `h2` (when
/// HTTP/2 is on) then `http/1.1`, certificates by SNI.
pub fn acceptor(tls: &Tls, http2: bool) -> TlsAcceptor {
    let alpn: &[&[u8]] = if http2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    acceptor_offering(tls, alpn)
}

/// The acceptor of a listener with these HTTP/2 settings: `h2` alone by
/// ALPN when it serves HTTP/2 only.
pub(crate) fn listener_acceptor(tls: &Tls, http2: &fulcrum_config::snapshot::Http2) -> TlsAcceptor {
    if http2.only {
        acceptor_offering(tls, &[b"h2"])
    } else {
        acceptor(tls, http2.enabled)
    }
}

fn acceptor_offering(tls: &Tls, alpn: &[&[u8]]) -> TlsAcceptor {
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni::new(&tls.certificates)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Session tickets let returning clients skip a full handshake.
    config.send_tls13_tickets = 2;
    TlsAcceptor::from(Arc::new(config))
}

/// Picks a certificate by SNI: an exact DNS name first, then a wildcard,
/// then the first certificate (clients without SNI, or unknown names).
#[derive(Debug)]
struct BySni {
    certificates: Vec<(Certificate, Arc<CertifiedKey>)>,
}

impl BySni {
    fn new(certs: &[Certificate]) -> Self {
        BySni {
            certificates: certs.iter().map(|c| (c.clone(), c.key.clone())).collect(),
        }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let default = self.certificates.first().map(|(_, k)| k.clone());
        let Some(name) = sni else { return default };
        // rustls hands SNI over lower-cased and validated as a DNS name.
        let exact = self
            .certificates
            .iter()
            .find(|(c, _)| c.dns_names.iter().any(|n| n == name));
        exact
            .or_else(|| self.certificates.iter().find(|(c, _)| c.covers(name)))
            .map(|(_, k)| k.clone())
            .or(default)
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}
