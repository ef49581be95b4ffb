//! A tracing subscriber that records poolwatch's events for assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One captured event: level, message and every field as text.
#[derive(Clone, Debug)]
pub struct Captured {
    pub level: Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl Captured {
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("event has no field {name}: {self:?}"))
    }

    pub fn field_u64(&self, name: &str) -> u64 {
        self.field(name)
            .parse()
            .unwrap_or_else(|e| panic!("field {name} is not a number ({e}): {self:?}"))
    }
}

#[derive(Clone, Default)]
pub struct Capture {
    events: Arc<Mutex<Vec<Captured>>>,
}

struct Visitor<'a>(&'a mut Captured);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = text;
        } else {
            self.0.fields.insert(field.name().to_owned(), text);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .fields
            .insert(field.name().to_owned(), value.to_owned());
    }
}

/// The message and every other field of an event, as text.
pub fn fields_of(event: &Event<'_>) -> (String, BTreeMap<String, String>) {
    let mut captured = Captured {
        level: *event.metadata().level(),
        message: String::new(),
        fields: BTreeMap::new(),
    };
    event.record(&mut Visitor(&mut captured));
    (captured.message, captured.fields)
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != poolwatch::TARGET {
            return;
        }
        let (message, fields) = fields_of(event);
        self.events.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

impl Capture {
    /// Captures this thread's events until the returned guard drops.
    pub fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// A subscriber for the whole process (for multi-threaded tests); the
    /// caller installs it with `set_global_default` or `with_default`.
    pub fn subscriber(&self) -> impl Subscriber + Send + Sync {
        tracing_subscriber::registry().with(self.clone())
    }

    pub fn events(&self) -> Vec<Captured> {
        self.events.lock().unwrap().clone()
    }

    /// Events whose message contains `needle`.
    pub fn matching(&self, needle: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| e.message.contains(needle))
            .collect()
    }

    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }
}

/// The process-wide capture of a test binary whose events come from
/// background threads (the sampler, the watchdog): installed once as the
/// global subscriber; each test reads its own pool's events.
pub fn global() -> &'static Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.subscriber())
            .expect("no other global subscriber in this binary");
        capture
    })
}

/// The global capture's events of `pool` whose message contains `needle`.
pub fn events_of(pool: &str, needle: &str) -> Vec<Captured> {
    global()
        .matching(needle)
        .into_iter()
        .filter(|e| e.fields.get("pool").map(String::as_str) == Some(pool))
        .collect()
}
