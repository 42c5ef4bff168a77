//! The server as a process, for the tests of every crate that runs it (the deploy crate's and
//! xtask's): `mlops-deploy serve` started on free loopback ports, its addresses read from the
//! line it prints, waited for until healthy, scraped, stopped with SIGTERM, killed if the test
//! ends early. Here rather than in `mlops-deploy` so that tests need not link libtorch.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the helpers' errors are: a test reports them, nothing matches on them.
pub type TestResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `BINARY serve --registry REGISTRY` on port 0 of loopback for all three listeners.
pub fn serve_command(binary: &Path, registry: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["serve", "--registry"])
        .arg(registry)
        .args(["--inference-addr", "127.0.0.1:0"])
        .args(["--management-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", "127.0.0.1:0"]);
    cmd
}

/// A running server; killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Base URL (`http://127.0.0.1:PORT`) of the inference listener (`/ping`, predictions).
    pub inference: String,
    /// Base URL (`http://127.0.0.1:PORT`) of the management listener (models, versions).
    pub management: String,
    /// Base URL (`http://127.0.0.1:PORT`) of the metrics listener (`/metrics`).
    pub metrics: String,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` (a [`serve_command`] with any further settings), logging to `log`, and
    /// waits for the line with its addresses.
    pub fn start(mut cmd: Command, log: &Path) -> TestResult<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(json) = line.strip_prefix("listening ") else {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("server did not start: {line:?}\n{text}").into());
        };
        let bound: serde_json::Value = serde_json::from_str(json)?;
        let url = |k: &str| -> TestResult<String> {
            Ok(format!("http://{}", bound[k].as_str().ok_or("no address")?))
        };
        Ok(ServerProcess {
            inference: url("inference")?,
            management: url("management")?,
            metrics: url("metrics")?,
            child,
            log: log.to_path_buf(),
        })
    }

    /// Waits until `/ping` answers 200 (at most `timeout`).
    pub fn wait_healthy(&self, timeout: Duration) -> TestResult<()> {
        let until = Instant::now() + timeout;
        let url = format!("{}/ping", self.inference);
        while Instant::now() < until {
            let status = agent().get(&url).call().map(|r| r.status().as_u16());
            if status.ok() == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        Err(format!("never healthy:\n{text}").into())
    }

    /// The sum of the samples of Prometheus metric `name` whose labels contain every one of
    /// `labels` (`key="value"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> TestResult<f64> {
        let text = agent()
            .get(&format!("{}/metrics", self.metrics))
            .call()?
            .body_mut()
            .read_to_string()?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                series.split('{').next() == Some(name)
                    && labels.iter().all(|want| series.contains(want))
            })
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum())
    }

    /// Sends SIGTERM and waits: the exit status and the log.
    pub fn stop(mut self) -> TestResult<(ExitStatus, String)> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = self.child.wait()?;
        Ok((status, std::fs::read_to_string(&self.log)?))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that returns every status as an answer.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}
