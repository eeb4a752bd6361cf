//! Certificates for TLS tests, made with the openssl CLI in a temporary
//! directory: a CA, a server certificate it signs for `localhost` and
//! `127.0.0.1`, and a second CA that signed nothing, to show that a server
//! whose certificate does not chain to the configured CA is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA, a server certificate it signed and an unrelated CA, in a directory
/// of their own (removed on drop; tests may put the server's files there too).
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes the certificates in a fresh temporary directory whose name
    /// starts with `label`. Panics, with openssl's message, if openssl fails.
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::ids::new_id(label));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let certs = Self { dir };
        certs.make_ca("ca");
        certs.make_ca("other-ca");
        std::fs::write(
            certs.dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write san.ext");
        certs.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        certs.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        certs
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the server's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA that signed nothing here (PEM).
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// The server's certificate, for `localhost` and `127.0.0.1` (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server certificate's private key (PEM, unencrypted).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A client certificate and key signed by the CA `ca` (`"ca"` or
    /// `"other-ca"`), made on first use: `(cert, key)`.
    pub fn client_cert(&self, ca: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (format!("client-{ca}.crt"), format!("client-{ca}.key"));
        if !self.dir.join(&cert).exists() {
            // Extensions make it an X.509 v3 certificate (rustls takes no v1).
            std::fs::write(
                self.dir.join("client.ext"),
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            )
            .expect("write client.ext");
            let csr = format!("client-{ca}.csr");
            self.openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=client",
                "-keyout",
                &key,
                "-out",
                &csr,
            ]);
            self.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "client.ext",
                "-out",
                &cert,
            ]);
        }
        (self.dir.join(cert), self.dir.join(key))
    }

    /// A self-signed CA `name.crt` with its key `name.key`.
    fn make_ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let mut command = Command::new("openssl");
        command.args(args).current_dir(&self.dir);
        run_ok(&mut command);
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` to completion; panics with its stderr if it fails.
pub fn run_ok(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port nothing listens on right now, for servers that cannot be handed a
/// bound listener (another process may take it first: callers retry).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
