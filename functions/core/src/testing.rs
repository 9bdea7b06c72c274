//! In-memory ports: they record what was sent and can refuse chosen messages, so
//! handler tests cover partial failures without an emulator.

use crate::messages::{DeadLetter, EnrichedJob, Notification};
use crate::ports::{MessageQueue, OutgoingMessage, PortError, Receipt, Topic, MAX_BATCH};
use async_trait::async_trait;
use std::sync::Mutex;

fn refused(operation: &'static str) -> PortError {
    PortError::Refused {
        operation,
        message: "refused by the test".into(),
    }
}

/// A queue in memory. Messages whose body contains one of `refuse` are refused.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    pub sent: Mutex<Vec<OutgoingMessage>>,
    /// Records made visible again early, as the handler asked.
    pub released: Mutex<Vec<Receipt>>,
    pub refuse: Mutex<Vec<String>>,
    pub batches: Mutex<Vec<usize>>,
}

impl MemoryQueue {
    pub fn refusing(pattern: &str) -> MemoryQueue {
        let q = MemoryQueue::default();
        q.refuse.lock().expect("lock").push(pattern.to_owned());
        q
    }

    pub fn bodies(&self) -> Vec<String> {
        self.sent
            .lock()
            .expect("lock")
            .iter()
            .map(|m| m.body.clone())
            .collect()
    }

    pub fn jobs(&self) -> Vec<EnrichedJob> {
        self.bodies()
            .iter()
            .map(|b| serde_json::from_str(b).expect("an enriched job"))
            .collect()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.bodies()
            .iter()
            .map(|b| serde_json::from_str(b).expect("a dead letter"))
            .collect()
    }
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        assert!(
            messages.len() <= MAX_BATCH,
            "batch of {} exceeds {MAX_BATCH}",
            messages.len()
        );
        self.batches.lock().expect("lock").push(messages.len());
        let refuse = self.refuse.lock().expect("lock").clone();
        messages
            .iter()
            .map(|m| {
                if refuse.iter().any(|p| m.body.contains(p.as_str())) {
                    Err(refused("SendMessageBatch"))
                } else {
                    self.sent.lock().expect("lock").push(m.clone());
                    Ok(())
                }
            })
            .collect()
    }

    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        self.released
            .lock()
            .expect("lock")
            .extend_from_slice(receipts);
        Ok(())
    }
}

/// A topic in memory. Notifications for a job id in `refuse` are refused.
#[derive(Debug, Default)]
pub struct MemoryTopic {
    pub published: Mutex<Vec<Notification>>,
    pub refuse: Mutex<Vec<String>>,
    /// The size of each `publish_all` call.
    pub batches: Mutex<Vec<usize>>,
}

impl MemoryTopic {
    pub fn refusing(job_id: &str) -> MemoryTopic {
        let t = MemoryTopic::default();
        t.refuse.lock().expect("lock").push(job_id.to_owned());
        t
    }

    pub fn notifications(&self) -> Vec<Notification> {
        self.published.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Topic for MemoryTopic {
    async fn publish_all(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        self.batches.lock().expect("lock").push(notifications.len());
        let mut results = Vec::with_capacity(notifications.len());
        for n in notifications {
            results.push(self.publish(n).await);
        }
        results
    }

    async fn publish(&self, notification: &Notification) -> Result<(), PortError> {
        if self
            .refuse
            .lock()
            .expect("lock")
            .contains(&notification.job_id)
        {
            return Err(refused("Publish"));
        }
        self.published
            .lock()
            .expect("lock")
            .push(notification.clone());
        Ok(())
    }
}

/// Span and metric exporters that keep what they are given, to check what an
/// invocation exported (and when).
pub mod exporters {
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::Temporality;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    /// Keeps every exported span.
    #[derive(Debug, Clone, Default)]
    pub struct KeptSpans(pub Arc<Mutex<Vec<SpanData>>>);

    impl KeptSpans {
        pub fn spans(&self) -> Vec<SpanData> {
            self.0.lock().expect("lock").clone()
        }
    }

    impl SpanExporter for KeptSpans {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    /// One exported data point of a `u64` counter.
    #[derive(Debug, Clone, PartialEq)]
    pub struct KeptPoint {
        pub metric: String,
        /// Sorted by key.
        pub attributes: Vec<(String, String)>,
        pub value: u64,
        /// When it was collected.
        pub time: SystemTime,
    }

    impl KeptPoint {
        /// The value of the attribute `key`, if the point has it.
        pub fn attribute(&self, key: &str) -> Option<&str> {
            self.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Keeps the names of exported metrics, and the counters' data points of each
    /// export.
    #[derive(Debug, Clone, Default)]
    pub struct KeptMetrics {
        names: Arc<Mutex<Vec<String>>>,
        exports: Arc<Mutex<Vec<Vec<KeptPoint>>>>,
    }

    impl KeptMetrics {
        pub fn names(&self) -> Vec<String> {
            self.names.lock().expect("lock").clone()
        }

        /// The counters' data points, one list per export call, oldest first.
        pub fn exports(&self) -> Vec<Vec<KeptPoint>> {
            self.exports.lock().expect("lock").clone()
        }
    }

    impl PushMetricExporter for KeptMetrics {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            let mut points = Vec::new();
            let mut names = self.names.lock().expect("lock");
            for scope in metrics.scope_metrics() {
                for metric in scope.metrics() {
                    names.push(metric.name().to_owned());
                    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                        continue;
                    };
                    for point in sum.data_points() {
                        let mut attributes: Vec<(String, String)> = point
                            .attributes()
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect();
                        attributes.sort();
                        points.push(KeptPoint {
                            metric: metric.name().to_owned(),
                            attributes,
                            value: point.value(),
                            time: sum.time(),
                        });
                    }
                }
            }
            self.exports.lock().expect("lock").push(points);
            Ok(())
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }

        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }
}
