//! tests/fixtures/fake_llm.py as a test upstream: a fake OpenAI/Anthropic
//! HTTPS server on 127.0.0.1 with a leaf from a CA made for the test with
//! the `openssl` CLI, plus the `run` helpers the tests that use it share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::clients::*;
use super::*;

/// The network tier and a fake server (see [`FakeLlm::start_with`]), or
/// `None` once the reason to skip `test` is printed.
pub fn fake_for(test: &str, expect_key: Option<&str>) -> Option<FakeLlm> {
    if !network_available(test) {
        return None;
    }
    match FakeLlm::start_with(expect_key) {
        Ok(f) => Some(f),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// fake_llm.py serving HTTPS on 127.0.0.1 with a leaf of its own test CA
/// (SAN api.openai.test, api.anthropic.test, 127.0.0.1). Killed on drop.
pub struct FakeLlm {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl FakeLlm {
    /// Start one; `Err` is the reason to skip. With `expect_key`, the server
    /// answers 401 unless a request carries `Authorization: Bearer KEY` or
    /// `x-api-key: KEY`.
    pub fn start_with(expect_key: Option<&str>) -> Result<FakeLlm, String> {
        let openssl = which("openssl").ok_or("openssl is not installed")?;
        which("curl").ok_or("curl is not installed")?;
        let python = system_python().ok_or("no python3 for the fake server")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ssl = |args: &[&str]| {
            let o = output_with_timeout(
                Command::new(&openssl).args(args).current_dir(d),
                Duration::from_secs(30),
            );
            assert_eq!(code(&o), 0, "openssl {args:?}: {}", stderr(&o));
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vallignus interception test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        ssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=api.openai.test",
        ]);
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=DNS:api.openai.test,DNS:api.anthropic.test,IP:127.0.0.1\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_llm.py");
        let child = Command::new(python)
            .arg(script)
            .args(["--cert", "leaf.pem", "--key", "leaf.key"])
            .args(["--port-file", "port", "--log", "log.jsonl"])
            .args(
                expect_key
                    .map(|k| ["--expect-key", k])
                    .into_iter()
                    .flatten(),
            )
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("fake.err")).unwrap())
            .spawn()
            .unwrap();
        let mut fake = FakeLlm {
            dir,
            child,
            port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(p) = std::fs::read_to_string(fake.dir.path().join("port")) {
                fake.port = p.trim().parse().unwrap();
                return Ok(fake);
            }
            if let Ok(Some(status)) = fake.child.try_wait() {
                panic!("fake_llm.py exited ({status}): {}", fake.errors());
            }
            assert!(Instant::now() < deadline, "fake_llm.py never bound a port");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_str(&self) -> String {
        self.ca().to_str().unwrap().to_owned()
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fake.err")).unwrap_or_default()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    /// What the upstream was sent, one JSON object per request.
    pub fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `run` flags that let the agent reach `hosts` through the proxy, with
    /// the proxy trusting the test CA when `trust`.
    pub fn flags(&self, hosts: &[&str], trust: bool) -> Vec<String> {
        let mut f = vec!["--connect-port".to_owned(), self.port.to_string()];
        for host in hosts {
            f.extend([
                "--allow-domain".to_owned(),
                (*host).to_owned(),
                "--resolve".to_owned(),
                format!("{host}:{}:127.0.0.1", self.port),
            ]);
        }
        if trust {
            f.extend(["--upstream-ca".to_owned(), self.ca_str()]);
        }
        f
    }

    /// [`FakeLlm::flags`] with the fake's CA trusted, then `extra`.
    pub fn trusted_flags(&self, hosts: &[&str], extra: &[&str]) -> Vec<String> {
        let mut f = self.flags(hosts, true);
        f.extend(strings(extra));
        f
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vallignus run -q FLAGS -- CMD`.
pub fn run(h: &Home, flags: &[String], cmd: &[&str]) -> std::process::Output {
    let mut args: Vec<&str> = vec!["run", "-q"];
    args.extend(flags.iter().map(String::as_str));
    args.push("--");
    args.extend(cmd);
    h.run(&args)
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The run's `net_request` events: (requests inside tunnels, tunnels).
pub fn split(h: &Home) -> (Vec<Value>, Vec<Value>) {
    net_requests(h)
        .into_iter()
        .partition(|r| r["method"] != "CONNECT")
}
