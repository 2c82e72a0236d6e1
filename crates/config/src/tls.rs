//! TLS certificates of a listener: read through the caller's
//! [`Environment`], parsed, their keys checked to match, their expiry
//! checked against the caller's clock. The crate stays pure: the file
//! system and the clock come in as arguments.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use toml::Spanned;

use crate::Environment;
use crate::diag::Diags;
use crate::raw::{RawTls, Span};
use crate::snapshot::{Certificate, Tls, TlsVersion};

/// A certificate that expires sooner than this gets a warning: time enough
/// to renew it before clients see errors.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

pub(crate) fn tls(
    d: &mut Diags<'_>,
    env: &dyn Environment,
    raw: &RawTls,
    span: Span,
    p: &str,
) -> Option<Tls> {
    let min_version = match raw.min_version.as_ref() {
        None => Some(TlsVersion::Tls12),
        Some(v) => match v.get_ref().as_str() {
            "1.2" => Some(TlsVersion::Tls12),
            "1.3" => Some(TlsVersion::Tls13),
            other => {
                d.error(
                    "invalid-value",
                    Some(v.span()),
                    format!("{p}.min_version"),
                    format!("`{other}` is not a TLS version Fulcrum offers"),
                )
                .hint("write \"1.2\" (the default) or \"1.3\"; older versions are not supported");
                None
            }
        },
    };
    let pairs: Vec<(&Spanned<String>, &Spanned<String>, String)> = match (
        &raw.cert,
        &raw.key,
        &raw.certificates,
    ) {
        (Some(cert), Some(key), None) => vec![(cert, key, p.to_owned())],
        (None, None, Some(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c = c.get_ref();
                (&c.cert, &c.key, format!("{p}.certificates[{i}]"))
            })
            .collect(),
        (_, _, Some(list)) if raw.cert.is_some() || raw.key.is_some() => {
            let at = raw.cert.as_ref().or(raw.key.as_ref()).map(|s| s.span());
            d.error(
                    "conflicting-tls",
                    at,
                    p,
                    "`cert`/`key` given together with `certificates`",
                )
                .hint("list every certificate under `certificates = [{ cert, key }, …]`, the default first");
            let _ = list;
            return None;
        }
        (None, None, _) => {
            d.error(
                    "missing-certificate",
                    Some(span),
                    p,
                    "`tls` names no certificate",
                )
                .hint("add `cert = \"cert.pem\", key = \"key.pem\"`, or `certificates = [{ cert, key }, …]`");
            return None;
        }
        (cert, _, _) => {
            let (missing, at) = match cert {
                Some(c) => ("key", c.span()),
                None => ("cert", raw.key.as_ref().map_or(span, |k| k.span())),
            };
            d.error(
                "missing-key",
                Some(at),
                format!("{p}.{missing}"),
                format!("required key `{missing}` is missing"),
            )
            .hint("a certificate needs both `cert` (PEM chain) and `key` (PEM private key)");
            return None;
        }
    };
    let several = pairs.len() > 1;
    let mut ok = true;
    let mut certificates = Vec::new();
    for (i, (cert, key, kp)) in pairs.into_iter().enumerate() {
        match certificate(d, env, cert, key, &kp) {
            Some(c) => {
                if several && i > 0 && c.dns_names.is_empty() {
                    d.warning(
                        "tls-no-dns-names",
                        Some(cert.span()),
                        format!("{kp}.cert"),
                        format!(
                            "certificate `{}` has no DNS names: SNI can never choose it",
                            cert.get_ref()
                        ),
                    )
                    .hint("issue it with subjectAltName DNS entries, or make it the first (default) certificate");
                }
                certificates.push(c);
            }
            None => ok = false,
        }
    }
    Some(Tls {
        certificates,
        min_version: min_version?,
    })
    .filter(|_| ok)
}

fn certificate(
    d: &mut Diags<'_>,
    env: &dyn Environment,
    cert: &Spanned<String>,
    key: &Spanned<String>,
    kp: &str,
) -> Option<Certificate> {
    let read = |d: &mut Diags<'_>, what: &str, path: &Spanned<String>, key_name: &str| match env
        .read_file(path.get_ref())
    {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            d.error(
                "tls-unreadable",
                Some(path.span()),
                format!("{kp}.{key_name}"),
                format!("cannot read {what} file `{}`: {e}", path.get_ref()),
            )
            .hint("check the path (relative to the config file's directory) and that Fulcrum may read it");
            None
        }
    };
    let cert_pem = read(d, "certificate", cert, "cert");
    let key_pem = read(d, "private key", key, "key");
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let Some(leaf) = chain.first() else {
        d.error(
            "tls-invalid-cert",
            Some(cert.span()),
            format!("{kp}.cert"),
            format!("`{}` holds no PEM certificate", cert.get_ref()),
        )
        .hint("give the leaf certificate first, then its intermediates, each as `-----BEGIN CERTIFICATE-----`");
        return None;
    };
    let parsed = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, parsed)) => parsed,
        Err(e) => {
            d.error(
                "tls-invalid-cert",
                Some(cert.span()),
                format!("{kp}.cert"),
                format!(
                    "the first certificate in `{}` does not parse: {e}",
                    cert.get_ref()
                ),
            )
            .hint("check that the file is an X.509 certificate in PEM form");
            return None;
        }
    };
    let not_after = parsed.validity().not_after.timestamp();
    let not_before = parsed.validity().not_before.timestamp();
    let mut dns_names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                dns_names.push(n.to_ascii_lowercase());
            }
        }
    }

    let Ok(private) = PrivateKeyDer::from_pem_slice(&key_pem) else {
        d.error(
            "tls-invalid-key",
            Some(key.span()),
            format!("{kp}.key"),
            format!("`{}` holds no PEM private key", key.get_ref()),
        )
        .hint("give an unencrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key in PEM form");
        return None;
    };
    let provider = rustls::crypto::ring::default_provider();
    let certified = match CertifiedKey::from_der(chain, private, &provider) {
        Ok(c) => c,
        Err(rustls::Error::InconsistentKeys(_)) => {
            d.error(
                "tls-key-mismatch",
                Some(key.span()),
                format!("{kp}.key"),
                format!(
                    "private key `{}` does not belong to certificate `{}`",
                    key.get_ref(),
                    cert.get_ref()
                ),
            )
            .hint("pair each certificate with the key it was issued for");
            return None;
        }
        Err(e) => {
            d.error(
                "tls-invalid-key",
                Some(key.span()),
                format!("{kp}.key"),
                format!("private key `{}` cannot be used: {e}", key.get_ref()),
            )
            .hint("use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key");
            return None;
        }
    };

    let now = env.now_unix();
    if not_before > now {
        d.error(
            "tls-not-yet-valid",
            Some(cert.span()),
            format!("{kp}.cert"),
            format!(
                "certificate `{}` is not valid until {}",
                cert.get_ref(),
                format_unix(not_before)
            ),
        )
        .hint("use the certificate valid now (or check this machine's clock); every client would refuse this one");
        return None;
    }
    let left = not_after - now;
    let expires = format_unix(not_after);
    if left <= 0 {
        d.error(
            "tls-expired",
            Some(cert.span()),
            format!("{kp}.cert"),
            format!("certificate `{}` expired on {expires}", cert.get_ref()),
        )
        .hint("renew the certificate; every client would refuse this one");
        return None;
    } else if left < EXPIRY_WARNING_DAYS * 86_400 {
        d.warning(
            "tls-expiring",
            Some(cert.span()),
            format!("{kp}.cert"),
            format!(
                "certificate `{}` expires on {expires}, in {} days",
                cert.get_ref(),
                left / 86_400
            ),
        )
        .hint("renew it now; after that date every client refuses it");
    }
    Some(Certificate {
        cert_path: cert.get_ref().clone(),
        dns_names,
        not_after,
        key: Arc::new(certified),
    })
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
fn format_unix(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    let mut day = humantime::format_rfc3339_seconds(t).to_string();
    day.truncate(10);
    day
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::format_unix(0), "1970-01-01");
        assert_eq!(super::format_unix(1_700_000_000), "2023-11-14");
        assert_eq!(super::format_unix(951_782_400), "2000-02-29");
    }
}
