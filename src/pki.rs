//! A development PKI: a gate CA, the appliance's server certificate and gate certificates.
//!
//! Production deployments bring their own CA; this one exists so that the demo, the tests and
//! a vendor's first integration run mutual TLS for real. A gate certificate's subject names
//! the gate in its common name (CN) and the gate's site in its organisational unit (OU); the
//! server reads both from the verified certificate, never from a request field.
//!
//! Layout written by [`write_development_pki`]:
//!
//! ```text
//! DIR/ca.pem  DIR/ca.key            the gate CA (it also issues the server certificate)
//! DIR/server.pem  DIR/server.key    the appliance: localhost, 127.0.0.1, ::1 and extra names
//! DIR/gates/gate-0001.pem .key …    one per gate
//! ```

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// What can fail while making or reading certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// Who a gate is, as its certificate says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateIdentity {
    /// The gate id (certificate CN).
    pub gate_id: String,
    /// The site (certificate OU).
    pub site: String,
}

/// The file name stem of gate `n` (1-based).
pub fn gate_name(n: usize) -> String {
    format!("gate-{n:04}")
}

/// Writes a CA, a server certificate and `gates` gate certificates into `dir`.
pub fn write_development_pki(
    dir: &Path,
    gates: usize,
    site: &str,
    extra_names: &[String],
) -> Result<(), PkiError> {
    fs::create_dir_all(dir.join("gates")).map_err(|source| io(dir, source))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("gatematch development gate CA", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), &ca_cert.pem())?;
    write_key(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = name("gatematch appliance", None);
    let mut names = vec!["localhost".to_owned()];
    names.extend(extra_names.iter().cloned());
    for n in &names {
        server_params
            .subject_alt_names
            .push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into()?),
            });
    }
    for ip in ["127.0.0.1", "::1"] {
        server_params
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("literal IP")));
    }
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer)?;
    write(&dir.join("server.pem"), &server_cert.pem())?;
    write_key(&dir.join("server.key"), &server_key.serialize_pem())?;

    for n in 1..=gates {
        let gate_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&gate_name(n), Some(site));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&gate_key, &issuer)?;
        let stem = dir.join("gates").join(gate_name(n));
        write(&stem.with_extension("pem"), &cert.pem())?;
        write_key(&stem.with_extension("key"), &gate_key.serialize_pem())?;
    }
    Ok(())
}

fn name(common_name: &str, site: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "gatematch development");
    if let Some(site) = site {
        dn.push(DnType::OrganizationalUnitName, site);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Reads the gate id (CN) and site (OU) from a DER certificate.
pub fn identity_of(der: &[u8]) -> Option<GateIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let gate_id = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let site = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some(GateIdentity { gate_id, site })
}

/// Reads every certificate in a PEM file.
pub fn read_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| PkiError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_owned(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn read_private_key(
    path: &Path,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    fs::write(path, text).map_err(|source| io(path, source))
}

/// Writes a private key readable by its owner alone.
fn write_key(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io(path, source))?;
    file.write_all(text.as_bytes())
        .map_err(|source| io(path, source))
}
