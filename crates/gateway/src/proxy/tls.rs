//! TLS on the API listener (rustls, ring): the certificate chain and key from PEM files,
//! reloaded when they change without a restart and without touching open connections.
//!
//! The files are read again every `tls.reload_interval_ms` and compared by content, so a
//! rotation shows however it is made: a file rewritten in place, renamed over, or a
//! Kubernetes Secret volume's symlink swap (`..data` → a new timestamped directory, which is
//! how cert-manager's renewals arrive). A new pair that parses and matches is put in force for
//! the next handshake; connections already open keep the session they have. A pair that does
//! not load (half-written, key and certificate apart) is logged and counted, and the one in
//! force stays.
//!
//! TLS 1.3 and 1.2 only, with ring's suites (AES-GCM and ChaCha20-Poly1305, ECDHE key
//! exchange: no CBC, no RSA key exchange); ALPN offers `h2` (when HTTP/2 is on) and
//! `http/1.1`. With `tls.client_ca_file`, a client must present a certificate that CA signed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::settings::TlsSettings;

/// The API listener's TLS configuration, as in force.
pub struct Tls {
    settings: TlsSettings,
    alpn_h2: bool,
    config: ArcSwap<ServerConfig>,
    /// The files' contents the configuration in force was built from.
    loaded_from: Mutex<Vec<u8>>,
    metrics: TlsMetrics,
}

struct TlsMetrics {
    reloads: IntCounterVec,
    loaded_at: IntGauge,
    handshakes: IntCounterVec,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.settings.cert_file)
            .finish_non_exhaustive()
    }
}

/// Why a certificate pair did not load: the file and what is wrong.
fn load_error(path: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: {what}", path.display())
}

/// The files' contents, in one buffer (what a change is detected by).
fn read_all(s: &TlsSettings) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    for path in std::iter::once(&s.cert_file)
        .chain(std::iter::once(&s.key_file))
        .chain(s.client_ca_file.iter())
    {
        let bytes = std::fs::read(path).map_err(|e| load_error(path, e))?;
        all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        all.extend_from_slice(&bytes);
    }
    Ok(all)
}

fn build(s: &TlsSettings, alpn_h2: bool) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&s.cert_file)
        .map_err(|e| load_error(&s.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| load_error(&s.cert_file, e))?;
    if certs.is_empty() {
        return Err(load_error(&s.cert_file, "no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| load_error(&s.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| load_error(ca, e))? {
                roots
                    .add(c.map_err(|e| load_error(ca, e))?)
                    .map_err(|e| load_error(ca, e))?;
            }
            if roots.is_empty() {
                return Err(load_error(ca, "no PEM certificate in it"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| load_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "{} and {}: {e}",
            s.cert_file.display(),
            s.key_file.display()
        )
    })?;
    config.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

impl Tls {
    /// Loads the pair (an error names the file and what is wrong: the gateway does not start).
    pub fn load(
        settings: TlsSettings,
        alpn_h2: bool,
        registry: &Registry,
    ) -> anyhow::Result<Arc<Tls>> {
        let contents = read_all(&settings)?;
        let config = build(&settings, alpn_h2)?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_reloads_total",
                "Certificate files that changed on disk, by result: ok (in force for new connections) or error (the previous pair stays)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let loaded_at = IntGauge::new(
            "tollgate_tls_certificate_loaded_timestamp_seconds",
            "When the certificate in force was loaded (Unix seconds)",
        )
        .expect("valid metric");
        let handshakes = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_handshakes_total",
                "TLS handshakes on the API listener by result (ok, error, timeout) and ALPN protocol",
            ),
            &["result", "alpn"],
        )
        .expect("valid metric");
        for m in [
            Box::new(reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(loaded_at.clone()),
            Box::new(handshakes.clone()),
        ] {
            let _ = registry.register(m);
        }
        loaded_at.set(chrono::Utc::now().timestamp());
        Ok(Arc::new(Tls {
            settings,
            alpn_h2,
            config: ArcSwap::from_pointee(config),
            loaded_from: Mutex::new(contents),
            metrics: TlsMetrics {
                reloads,
                loaded_at,
                handshakes,
            },
        }))
    }

    /// The acceptor for the next connection: the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    pub(crate) fn handshake(&self, result: &str, alpn: &str) {
        self.metrics
            .handshakes
            .with_label_values(&[result, alpn])
            .inc();
    }

    /// Reads the files again; puts a changed pair in force. Whether it changed.
    pub fn reload(&self) -> bool {
        let contents = match read_all(&self.settings) {
            Ok(c) => c,
            Err(e) => {
                // A file missing for a moment (mid-rotation) is retried next round.
                tracing::debug!(error = %e, "TLS files not readable");
                return false;
            }
        };
        let mut held = self.loaded_from.lock().expect("not poisoned");
        if *held == contents {
            return false;
        }
        match build(&self.settings, self.alpn_h2) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                *held = contents;
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics.loaded_at.set(chrono::Utc::now().timestamp());
                tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificate reloaded: new connections get it");
                true
            }
            Err(e) => {
                // Not remembered: retried until it loads (the other half of a pair may still
                // be on its way).
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %format!("{e:#}"), "TLS certificate change not loaded: the previous one stays in force");
                false
            }
        }
    }

    /// Checks the files every `tls.reload_interval_ms` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.settings.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let tls = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
                }
                () = &mut stop => return,
            }
        }
    }

    /// How long a client has to complete its handshake.
    pub fn handshake_timeout(header_read_timeout: Duration) -> Duration {
        header_read_timeout
    }
}
