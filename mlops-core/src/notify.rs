//! Slack notifications through an [incoming webhook].
//!
//! The pipeline runner tells a channel what happened: a run succeeded or failed, whether the new
//! model is deployed, and (in continuous training) that new data arrived; the server tells it
//! when a model's recent requests stop looking like its test set (drift) and when they recover. Notifications are a
//! courtesy, never part of the pipeline's result, so [`Notifier::send`] cannot fail its caller:
//! it retries what may be transient, gives up within a bounded time, prints a warning and reports
//! whether the message was delivered.
//!
//! The webhook URL is a credential (anyone holding it can post to the channel), so it is read
//! from `SLACK_WEBHOOK_URL` only and never appears in any output of this module: not in warnings,
//! not in `Debug`, and not through ureq's error messages, which can quote the URL and are
//! therefore never printed; only a generic reason ("HTTP 404", "timed out") is.
//!
//! HTTP is done with ureq 3. Slack's webhooks are `https://` URLs, which need ureq's `rustls`
//! feature (enabled with this module's `notify` feature); without it only `http://` URLs (a
//! local relay, the tests' server) could be reached.
//!
//! [incoming webhook]: https://api.slack.com/messaging/webhooks

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

/// What happened, for the message.
pub enum Event<'a> {
    /// A pipeline run finished; `accuracy` is a fraction in 0..=1, `decision` the eval stage's
    /// ("deploy" or not), `version` the model version registered, `seconds` the run's duration.
    PipelineSucceeded {
        /// The run's name.
        run: &'a str,
        /// Test accuracy of the new model, a fraction in 0..=1; `None` when no evaluation ran.
        accuracy: Option<f64>,
        /// The deploy gate's verdict (`deploy` or not); `None` when no evaluation ran.
        decision: Option<&'a str>,
        /// The registry version the model was registered as; `None` when none was registered.
        version: Option<u64>,
        /// Wall-clock duration of the whole run, in seconds.
        seconds: f64,
    },
    /// A pipeline run stopped at `stage` with `error`.
    PipelineFailed {
        /// The run's name.
        run: &'a str,
        /// The stage that failed (`set-up` when none had started).
        stage: &'a str,
        /// The error with its causes; only its first 2,000 characters are sent.
        error: &'a str,
    },
    /// The eval stage decided whether the new model replaces the deployed one.
    DeployDecision {
        /// The run's name.
        run: &'a str,
        /// Whether the new model passed the gate and is deployed.
        deploy: bool,
        /// Test accuracy of the new model, a fraction in 0..=1.
        accuracy: f64,
        /// The registry version the model was registered as, when it was.
        version: Option<u64>,
    },
    /// Continuous training found new data (image counts) and whether it retrains on it.
    NewData {
        /// Training images beyond the deployed version's data (0 when nothing is deployed).
        train: usize,
        /// Gallery images beyond the deployed version's data (0 when nothing is deployed).
        gallery: usize,
        /// Whether a training run follows.
        retraining: bool,
    },
    /// A served model version's recent requests departed from its test set's distribution
    /// (`alerting`), or came back to it. Shares are fractions of the last `window` requests.
    Drift {
        /// The served model's name.
        model: &'a str,
        /// The served version.
        version: u64,
        /// `true` when the alert was raised, `false` when it cleared.
        alerting: bool,
        /// Requests in the window the figures were computed over.
        window: usize,
        /// Share of the window's requests whose nearest gallery similarity fell below the
        /// test set's low quantile, in 0..=1.
        low_similarity_share: f64,
        /// The share above which the alert is raised.
        low_similarity_limit: f64,
        /// Total variation distance between the window's predicted-class mix and the test
        /// set's, in 0..=1.
        class_shift: f64,
        /// The distance above which the alert is raised.
        class_shift_limit: f64,
    },
}

/// Sends [`Event`]s to one Slack incoming webhook, or does nothing when none is configured.
pub struct Notifier {
    /// The webhook; `None` turns notifications off. Secret: never printed.
    url: Option<String>,
    /// Limit for one whole attempt (connect, send, response), so a hanging webhook cannot hang
    /// the pipeline.
    timeout: Duration,
    /// Further attempts after the first, for errors that may be transient.
    retries: u32,
    /// Wait before the first retry; doubled before each further one.
    backoff: Duration,
    agent: ureq::Agent,
}

/// Defaults for [`Notifier::from_env`]: at most 4 attempts of 5 s each plus 1.4 s of waiting,
/// so a dead webhook costs a run about 21 s at worst.
const TIMEOUT: Duration = Duration::from_secs(5);
const RETRIES: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);

/// Slack rejects a section text over 3,000 characters; long errors are cut well below that.
const MAX_ERROR_CHARS: usize = 2_000;

impl Notifier {
    /// From the environment: SLACK_WEBHOOK_URL (unset or empty: notifications off).
    pub fn from_env() -> Notifier {
        let url = std::env::var("SLACK_WEBHOOK_URL").ok();
        Notifier::new(url, TIMEOUT, RETRIES, BACKOFF)
    }

    /// For tests and callers with their own settings.
    ///
    /// `timeout` bounds each attempt; `retries` attempts follow a failed first one, the first
    /// after `backoff` and each further one after twice the previous wait.
    pub fn new(
        url: Option<String>,
        timeout: Duration,
        retries: u32,
        backoff: Duration,
    ) -> Notifier {
        // A URL of blanks (an empty secret in CI renders as "") means "off", not "broken".
        let url = url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Statuses are answers to act on (retry or give up), not errors that hide them.
            .http_status_as_error(false)
            // A webhook does not redirect; following one could send the payload elsewhere.
            .max_redirects(0)
            .user_agent("mlops-rs");
        if url.as_deref().is_some_and(is_loopback) {
            // A local relay (or the tests' server) is never behind the environment's proxy.
            config = config.proxy(None);
        }
        Notifier {
            url,
            timeout,
            retries,
            backoff,
            agent: config.build().into(),
        }
    }

    /// Sends `event`; never fails the caller: returns whether it was delivered, logs (eprintln) a warning that never contains the URL when it could not.
    pub fn send(&self, event: &Event) -> bool {
        let Some(url) = &self.url else {
            return false; // Notifications are off: nothing to do, nothing to warn about.
        };
        let body = payload(event).to_string();
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(url, &body) {
                Ok(()) => return true,
                Err(failure) if failure.retry && attempt <= self.retries => {
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2);
                }
                Err(failure) => {
                    let tries = if attempt == 1 { "try" } else { "tries" };
                    let reason = failure.reason;
                    // The server logs through tracing; xtask has no subscriber and prints.
                    if tracing::dispatcher::has_been_set() {
                        tracing::warn!(%reason, attempt, "Slack notification not delivered");
                    } else {
                        eprintln!(
                            "warning: Slack notification not delivered ({reason}, after {attempt} {tries})"
                        );
                    }
                    return false;
                }
            }
        }
    }

    /// One POST of the JSON `body`. The failure's reason is built from the status or the error's
    /// kind only, never from ureq's error text, which may quote the URL.
    fn attempt(&self, url: &str, body: &str) -> Result<(), Failure> {
        let response = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let mut response = response.map_err(failure)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        // Slack answers a rejected message with a short code ("invalid_payload", "no_service"):
        // worth showing, and safe when it is only lower-case letters and underscores.
        let code = response
            .body_mut()
            .with_config()
            .limit(256)
            .read_to_string()
            .unwrap_or_default();
        let code = code.trim();
        let reason = if !code.is_empty()
            && code.len() <= 64
            && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            format!("HTTP {status}: {code}")
        } else {
            format!("HTTP {status}")
        };
        Err(Failure {
            reason,
            // The server is busy or broken for now; any other answer will not change on retry.
            retry: status == 429 || status >= 500,
        })
    }

    /// The longest [`send`](Self::send) can take: every attempt timing out, plus the waits.
    #[cfg(test)]
    fn time_bound(&self) -> Duration {
        let attempts = self.timeout * (self.retries + 1);
        let waits = (0..self.retries).map(|i| self.backoff * 2u32.pow(i)).sum();
        attempts + waits
    }
}

impl fmt::Debug for Notifier {
    /// By hand, because the derived one would print the secret URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, in words safe to print, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    reason: String,
    retry: bool,
}

/// A ureq error as a [`Failure`]; matches the kind and drops the message (it may quote the URL).
fn failure(error: ureq::Error) -> Failure {
    use ureq::Error as E;
    let (reason, retry) = match error {
        E::Timeout(_) => ("timed out".to_string(), true),
        E::ConnectionFailed => ("connection failed".to_string(), true),
        E::HostNotFound => ("host not found".to_string(), true),
        E::Io(e) => (format!("connection failed: {}", e.kind()), true),
        E::Protocol(_) => ("invalid HTTP response".to_string(), true),
        E::BadUri(_) | E::Http(_) => ("invalid webhook URL".to_string(), false),
        E::ConnectProxyFailed(_) => ("proxy connection failed".to_string(), true),
        // Certificate and handshake errors (ureq's Rustls variant among them) end up in `_`.
        E::Tls(_) | E::TlsRequired => ("TLS error".to_string(), false),
        _ => ("request failed".to_string(), false),
    };
    Failure { reason, retry }
}

/// Whether the URL's host is this machine (the only case where proxies are bypassed).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The Slack JSON payload for an event: {"text": "...", "blocks": [...]} (incoming-webhook format).
///
/// `text` is the whole message in one line (Slack shows it in notifications and where blocks
/// cannot be shown); `blocks` lay the same facts out for the channel.
pub fn payload(event: &Event) -> Value {
    match *event {
        Event::PipelineSucceeded {
            run,
            accuracy,
            decision,
            version,
            seconds,
        } => {
            let headline = format!(
                ":white_check_mark: Pipeline run `{}` succeeded in {}",
                escape(run),
                duration(seconds)
            );
            let mut facts = Vec::new();
            if let Some(a) = accuracy {
                facts.push(("Accuracy", percent(a)));
            }
            if let Some(d) = decision {
                facts.push(("Decision", escape(d)));
            }
            if let Some(v) = version {
                facts.push(("Model version", v.to_string()));
            }
            message(headline, &facts, None)
        }
        Event::PipelineFailed { run, stage, error } => {
            let error = truncate(error.trim(), MAX_ERROR_CHARS);
            let first_line = error.lines().next().unwrap_or_default();
            let headline = format!(
                ":x: Pipeline run `{}` failed at stage `{}`",
                escape(run),
                escape(stage)
            );
            let mut value = message(headline.clone(), &[], Some(&error));
            // The one-line text carries the error's first line: enough to tell failures apart.
            value["text"] = json!(format!("{headline}: {}", escape(first_line)));
            value
        }
        Event::DeployDecision {
            run,
            deploy,
            accuracy,
            version,
        } => {
            let model = version.map_or("the new model".to_string(), |v| {
                format!("model version {v}")
            });
            let headline = if deploy {
                format!(":rocket: Run `{}`: deploying {model}", escape(run))
            } else {
                format!(
                    ":no_entry: Run `{}`: {model} is not deployed; the deployed model stays",
                    escape(run)
                )
            };
            let decision = if deploy {
                "deploy"
            } else {
                "keep the deployed model"
            };
            let facts = [
                ("Accuracy", percent(accuracy)),
                ("Decision", decision.to_string()),
            ];
            message(headline, &facts, None)
        }
        Event::NewData {
            train,
            gallery,
            retraining,
        } => {
            let then = if retraining {
                "retraining"
            } else {
                "no retraining needed"
            };
            let headline = format!(
                ":inbox_tray: New data: {train} training and {gallery} gallery images; {then}"
            );
            let facts = [
                ("Training images", train.to_string()),
                ("Gallery images", gallery.to_string()),
            ];
            message(headline, &facts, None)
        }
        Event::Drift {
            model,
            version,
            alerting,
            window,
            low_similarity_share,
            low_similarity_limit,
            class_shift,
            class_shift_limit,
        } => drift_message(
            (model, version, alerting, window),
            (
                low_similarity_share,
                low_similarity_limit,
                class_shift,
                class_shift_limit,
            ),
        ),
    }
}

/// The facts of a drift event, which the one-line text also carries.
fn drift_message(
    (model, version, alerting, window): (&str, u64, bool, usize),
    (low, low_limit, shift, shift_limit): (f64, f64, f64, f64),
) -> Value {
    let headline = if alerting {
        format!(
            ":warning: Model `{}` version {version}: recent requests do not look like its test set",
            escape(model)
        )
    } else {
        format!(
            ":white_check_mark: Model `{}` version {version}: recent requests look like its test set again",
            escape(model)
        )
    };
    let facts = [
        ("Requests in the window", window.to_string()),
        (
            "Low-similarity share",
            format!("{} (limit {})", percent(low), percent(low_limit)),
        ),
        (
            "Predicted-class shift",
            format!("{shift:.3} (limit {shift_limit:.3})"),
        ),
    ];
    message(headline, &facts, None)
}

/// `text` = the headline and its facts in one line; blocks = the headline, the facts as fields,
/// and a code block for `detail`.
fn message(headline: String, facts: &[(&str, String)], detail: Option<&str>) -> Value {
    let mut text = headline.clone();
    if !facts.is_empty() {
        let list: Vec<String> = facts
            .iter()
            .map(|(name, value)| format!("{}: {value}", name.to_lowercase()))
            .collect();
        text = format!("{text} ({})", list.join(", "));
    }
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": headline}})];
    if !facts.is_empty() {
        let fields: Vec<Value> = facts
            .iter()
            .map(|(name, value)| json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(detail) = detail {
        // Backticks inside would close the code block early; a similar-looking quote keeps it.
        let detail = escape(detail).replace("```", "'''");
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{detail}```")}}));
    }
    json!({"text": text, "blocks": blocks})
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters (links, mentions): escape them.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters, cut at a character boundary, with a marker when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}… (truncated)", &s[..end]),
        None => s.to_string(),
    }
}

/// A fraction as a percentage: 0.9123 -> "91.23%".
fn percent(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

/// A run's duration for people: "42.0 s", "3 min 05 s", "1 h 02 min".
fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "an unknown time".to_string();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    if whole < 3600 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{} h {:02} min", whole / 3600, whole % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// The path of the tests' webhook: stands in for Slack's secret part of the URL.
    const SECRET_PATH: &str = "/services/T000/B000/s3cr3t-t0ken";

    /// What the test server does with each connection, in order.
    #[derive(Clone, Copy)]
    enum Reply {
        /// Answer with this status.
        Status(u16),
        /// Read the request, then hold the connection without answering.
        Hang,
    }

    /// One request as the server received it.
    struct Request {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1 following `script`, one connection per entry.
    /// Every wait in it is bounded, so a broken test ends instead of hanging.
    fn server(script: Vec<Reply>) -> (String, Arc<Mutex<Vec<Request>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}{SECRET_PATH}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut held = Vec::new(); // hung connections stay open until the thread ends
            for reply in script {
                let stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let Some(request) = read_request(&stream) else {
                    return;
                };
                record.lock().unwrap().push(request);
                match reply {
                    Reply::Status(code) => answer(stream, code),
                    Reply::Hang => held.push(stream),
                }
            }
            // Long enough to outlast the client's timeouts, short enough to end.
            std::thread::sleep(Duration::from_secs(3));
            drop(held);
        });
        (url, seen)
    }

    /// The request line, headers and Content-Length body.
    fn read_request(stream: &TcpStream) -> Option<Request> {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(Request {
            request_line: request_line.trim_end().to_string(),
            headers,
            body,
        })
    }

    fn answer(mut stream: TcpStream, code: u16) {
        let body = if code == 200 { "ok" } else { "no_service" };
        let response = format!(
            "HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes());
    }

    fn notifier(url: &str, timeout_ms: u64, retries: u32) -> Notifier {
        Notifier::new(
            Some(url.to_string()),
            Duration::from_millis(timeout_ms),
            retries,
            Duration::from_millis(10),
        )
    }

    fn succeeded() -> Event<'static> {
        Event::PipelineSucceeded {
            run: "nightly-42",
            accuracy: Some(0.9123),
            decision: Some("deploy"),
            version: Some(7),
            seconds: 185.0,
        }
    }

    #[test]
    fn delivers_json_with_the_facts() {
        let (url, seen) = server(vec![Reply::Status(200)]);
        assert!(notifier(&url, 2_000, 0).send(&succeeded()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let request = &seen[0];
        assert_eq!(request.request_line, format!("POST {SECRET_PATH} HTTP/1.1"));
        assert!(request
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json"));
        let body: Value = serde_json::from_slice(&request.body).expect("a JSON body");
        let text = body["text"].as_str().expect("a text field");
        assert!(text.contains("nightly-42"), "{text}");
        assert!(text.contains("91.23%"), "{text}");
        assert!(text.contains("deploy"), "{text}");
        assert!(text.contains("3 min 05 s"), "{text}");
        assert!(body["blocks"].as_array().is_some_and(|b| !b.is_empty()));
    }

    #[test]
    fn retries_after_a_server_error() {
        let (url, seen) = server(vec![Reply::Status(500), Reply::Status(200)]);
        assert!(notifier(&url, 2_000, 3).send(&succeeded()));
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn does_not_retry_a_client_error() {
        let (url, seen) = server(vec![Reply::Status(404), Reply::Status(200)]);
        let n = notifier(&url, 2_000, 3);
        let failure = n.attempt(n.url.as_ref().unwrap(), "{}").unwrap_err();
        assert!(!failure.retry);
        assert_eq!(failure.reason, "HTTP 404: no_service");
        assert!(n.send(&succeeded()), "the second connection answers 200");
        assert_eq!(seen.lock().unwrap().len(), 2);
        let (url, seen) = server(vec![Reply::Status(403), Reply::Status(200)]);
        assert!(!notifier(&url, 2_000, 3).send(&succeeded()));
        assert_eq!(seen.lock().unwrap().len(), 1, "a 403 is not retried");
    }

    #[test]
    fn gives_up_on_a_hanging_server_in_bounded_time() {
        let (url, seen) = server(vec![Reply::Hang, Reply::Hang]);
        let n = notifier(&url, 300, 1);
        let started = Instant::now();
        assert!(!n.send(&succeeded()));
        let elapsed = started.elapsed();
        assert!(
            elapsed < n.time_bound() + Duration::from_secs(1),
            "{elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert_eq!(seen.lock().unwrap().len(), 2, "one retry after the timeout");
    }

    #[test]
    fn without_a_url_nothing_is_sent() {
        for url in [None, Some(String::new()), Some("  ".to_string())] {
            let n = Notifier::new(url, Duration::from_secs(30), 3, Duration::from_secs(30));
            let started = Instant::now();
            assert!(!n.send(&succeeded()));
            assert!(started.elapsed() < Duration::from_millis(100));
        }
    }

    #[test]
    fn the_url_never_shows() {
        let url = format!("http://127.0.0.1:9{SECRET_PATH}");
        let n = notifier(&url, 300, 0);
        let debug = format!("{n:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");

        // A refused connection: a port just freed on loopback.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}{SECRET_PATH}");
        let failure = notifier(&url, 300, 0).attempt(&url, "{}").unwrap_err();
        assert!(failure.retry);
        assert!(!failure.reason.contains("s3cr3t"), "{}", failure.reason);

        // A URL ureq rejects (its error would quote it).
        let url = "http://exa mple.invalid/s3cr3t";
        let failure = notifier(url, 300, 0).attempt(url, "{}").unwrap_err();
        assert!(!failure.retry);
        assert!(!failure.reason.contains("s3cr3t"), "{}", failure.reason);
    }

    #[test]
    fn drift_alerts_name_the_version_and_the_figures() {
        let drift = |alerting| {
            payload(&Event::Drift {
                model: "fashion-mnist",
                version: 3,
                alerting,
                window: 200,
                low_similarity_share: 0.415,
                low_similarity_limit: 0.3,
                class_shift: 0.21,
                class_shift_limit: 0.4,
            })
        };
        let fired = drift(true);
        let text = fired["text"].as_str().unwrap();
        assert!(
            text.starts_with(":warning: Model `fashion-mnist` version 3"),
            "{text}"
        );
        assert!(
            text.contains("low-similarity share: 41.50% (limit 30.00%)"),
            "{text}"
        );
        assert!(
            text.contains("predicted-class shift: 0.210 (limit 0.400)"),
            "{text}"
        );
        let cleared = drift(false)["text"].as_str().unwrap().to_string();
        assert!(
            cleared.contains("look like its test set again"),
            "{cleared}"
        );
    }

    #[test]
    fn payloads_read_well() {
        let failed = payload(&Event::PipelineFailed {
            run: "r1",
            stage: "train",
            error: "loss is NaN <at epoch 3>\ncaused by: ```bad```",
        });
        let text = failed["text"].as_str().unwrap();
        assert_eq!(
            text,
            ":x: Pipeline run `r1` failed at stage `train`: loss is NaN &lt;at epoch 3&gt;"
        );
        let detail = failed["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(detail.starts_with("```loss is NaN") && detail.ends_with("'''bad'''```"));

        let keep = payload(&Event::DeployDecision {
            run: "r2",
            deploy: false,
            accuracy: 0.5,
            version: None,
        });
        let text = keep["text"].as_str().unwrap();
        assert!(
            text.contains("not deployed") && text.contains("50.00%"),
            "{text}"
        );

        let data = payload(&Event::NewData {
            train: 60_000,
            gallery: 10_000,
            retraining: true,
        });
        let text = data["text"].as_str().unwrap();
        assert!(
            text.contains("60000 training") && text.contains("retraining"),
            "{text}"
        );

        let long = "x".repeat(5_000);
        let failed = payload(&Event::PipelineFailed {
            run: "r3",
            stage: "eval",
            error: &long,
        });
        let detail = failed["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(detail.chars().count() < 3_000);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:8080/x"));
        assert!(is_loopback("http://localhost/x"));
        assert!(is_loopback("http://[::1]:80/x"));
        assert!(!is_loopback("https://hooks.slack.com/services/T/B/X"));
        assert!(!is_loopback("http://127.0.0.1.example.com/x"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration(42.04), "42.0 s");
        assert_eq!(duration(185.0), "3 min 05 s");
        assert_eq!(duration(3_720.0), "1 h 02 min");
    }
}
