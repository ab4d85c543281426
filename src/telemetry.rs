//! Structured logs (AUD-6): one JSON object per line on stdout by default,
//! so a collector or SIEM can ingest them, or plain text for a terminal;
//! and optionally syslog (RFC 5424 over UDP, or over TCP with RFC 6587
//! octet counting) to `syslog_url`. Committed audit events are logged with
//! target `audit`, security events with target `security`; both reach
//! every sink.
//!
//! Secrets never reach a log: they are `secrecy` types, whose `Debug`
//! prints a redaction, handlers never log bodies, and audit events carry
//! sensitive values only as `"[redacted]"`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpStream, UdpSocket};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Messages waiting for the syslog sender at most; beyond, they are dropped
/// rather than slowing the server down.
const SYSLOG_QUEUE: usize = 16_384;

pub fn init(format: LogFormat, level: &str, syslog: Option<&str>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stdout),
        ),
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stdout),
        ),
    };
    let syslog = syslog
        .and_then(|url| SyslogTarget::parse(url).ok())
        .map(SyslogLayer::start);
    // A second init (tests) keeps the first subscriber.
    let _ = Registry::default()
        .with(fmt)
        .with(syslog)
        .with(filter)
        .try_init();
}

pub use crate::config::SyslogTarget;

struct SyslogLayer {
    queue: SyncSender<String>,
    hostname: String,
    pid: u32,
}

impl SyslogLayer {
    fn start(target: SyslogTarget) -> SyslogLayer {
        let (queue, messages) = sync_channel::<String>(SYSLOG_QUEUE);
        std::thread::Builder::new()
            .name("syslog".into())
            .spawn(move || {
                let udp = UdpSocket::bind(("0.0.0.0", 0)).ok();
                let mut tcp: Option<TcpStream> = None;
                for message in messages {
                    match target {
                        SyslogTarget::Udp(address) => {
                            if let Some(socket) = &udp {
                                let _ = socket.send_to(message.as_bytes(), address);
                            }
                        }
                        SyslogTarget::Tcp(address) => {
                            // Reconnect lazily; a message that fails twice is dropped.
                            for _ in 0..2 {
                                if tcp.is_none() {
                                    tcp = TcpStream::connect_timeout(
                                        &address,
                                        Duration::from_secs(2),
                                    )
                                    .ok();
                                }
                                let Some(stream) = tcp.as_mut() else { break };
                                let framed = format!("{} {message}", message.len());
                                if stream.write_all(framed.as_bytes()).is_ok() {
                                    break;
                                }
                                tcp = None;
                            }
                        }
                    }
                }
            })
            .expect("the syslog thread starts");
        SyslogLayer {
            queue,
            hostname: hostname(),
            pid: std::process::id(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".to_owned())
}

/// Collects an event's fields as JSON.
#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

impl<S: Subscriber> Layer<S> for SyslogLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Facility: 13 "log audit" for audit events, 4 "auth" for security
        // events, 1 "user" otherwise (RFC 5424 §6.2.1).
        let (facility, msgid) = match meta.target() {
            "audit" => (13, "audit"),
            "security" => (4, "security"),
            _ => (1, "log"),
        };
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let body = match fields.0.remove("audit_event") {
            Some(serde_json::Value::String(event)) => event,
            _ => {
                fields.0.insert("target".into(), meta.target().into());
                serde_json::Value::Object(fields.0).to_string()
            }
        };
        let mut line = String::with_capacity(body.len() + 96);
        let _ = write!(
            line,
            "<{}>1 {} {} strongroom {} {msgid} - {body}",
            facility * 8 + severity,
            crate::clock::now(),
            self.hostname,
            self.pid
        );
        let _ = self.queue.try_send(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_urls_name_a_transport_and_an_address() {
        assert_eq!(
            SyslogTarget::parse("udp://127.0.0.1:5514"),
            Ok(SyslogTarget::Udp("127.0.0.1:5514".parse().unwrap()))
        );
        assert!(matches!(
            SyslogTarget::parse("tcp://127.0.0.1:601"),
            Ok(SyslogTarget::Tcp(_))
        ));
        assert!(SyslogTarget::parse("http://127.0.0.1:514").is_err());
        assert!(SyslogTarget::parse("udp://nowhere").is_err());
    }
}
