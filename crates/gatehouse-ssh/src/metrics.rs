//! The SSH front door's metrics, as the HTTP front door has them for requests: every command
//! counted by action, decision and exit status, its duration, and the commands in flight. The
//! app registers them in the one registry `/metrics` serves ([`SshMetrics::register`]).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    action: &'static str,
    decision: &'static str,
    exit: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    ]
    .into_iter()
}

/// The counters; cloning shares them.
#[derive(Clone, Debug)]
pub struct SshMetrics {
    commands: Family<CommandLabels, Counter>,
    duration: Family<ActionLabel, Histogram>,
    in_flight: Gauge,
}

impl Default for SshMetrics {
    fn default() -> Self {
        Self {
            commands: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            in_flight: Gauge::default(),
        }
    }
}

/// A command counted in `gatehouse_ssh_commands_in_flight` for as long as this lives.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl SshMetrics {
    /// Registers the metrics (`gatehouse_ssh_commands_total`,
    /// `gatehouse_ssh_command_duration_seconds`, `gatehouse_ssh_commands_in_flight` under the
    /// registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ssh_commands",
            "SSH commands by action, decision and exit status",
            self.commands.clone(),
        );
        registry.register(
            "ssh_command_duration_seconds",
            "Time from an SSH command to its exit status",
            self.duration.clone(),
        );
        registry.register(
            "ssh_commands_in_flight",
            "SSH commands being served",
            self.in_flight.clone(),
        );
    }

    /// Counts a command in flight until the returned value is dropped.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts a finished command.
    pub(crate) fn finished(
        &self,
        action: Option<&'static str>,
        decision: Option<&'static str>,
        exit: u16,
        started: Instant,
    ) {
        let action = action.unwrap_or("none");
        self.commands
            .get_or_create(&CommandLabels {
                action,
                decision: decision.unwrap_or("none"),
                exit,
            })
            .inc();
        self.duration
            .get_or_create(&ActionLabel { action })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_by_action_decision_and_exit() {
        let m = SshMetrics::default();
        let mut reg = Registry::with_prefix("gatehouse");
        m.register(&mut reg);
        {
            let _f = m.in_flight();
            m.finished(Some("git:read"), Some("allow"), 0, Instant::now());
        }
        m.finished(Some("git:write"), Some("deny"), 128, Instant::now());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg)
            .unwrap_or_else(|e| panic!("{e}"));
        for line in [
            "gatehouse_ssh_commands_total{action=\"git:read\",decision=\"allow\",exit=\"0\"} 1",
            "gatehouse_ssh_commands_total{action=\"git:write\",decision=\"deny\",exit=\"128\"} 1",
            "gatehouse_ssh_command_duration_seconds_count{action=\"git:read\"} 1",
            "gatehouse_ssh_commands_in_flight 0",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
    }
}
