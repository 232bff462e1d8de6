//! The lines a replica writes (its watchdog's and its function's), passed on once: into the
//! function's log for `/system/logs` as the replica wrote them (a JSON line of a local fwatchdog
//! as the text fwatchdog would have written), and into the gateway's own log at the line's level
//! with the function and replica named, without a second time stamp.

use crate::gateway::logs::FunctionLogs;
use crate::logging::{self, ReplicaLine};

/// One replica's lines' destination.
#[derive(Debug, Clone)]
pub struct ReplicaLog {
    /// The function logs.
    pub logs: std::sync::Arc<FunctionLogs>,
    /// The function.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The replica, as `/system/logs` names it (`NAME-N`).
    pub instance: String,
}

impl ReplicaLog {
    /// Passes one line on; returns it parsed when it is one of fwatchdog's JSON lines.
    pub fn pass_on(&self, line: &str) -> Option<ReplicaLine> {
        match ReplicaLine::parse(line) {
            Some(parsed) => {
                self.logs.push(
                    &self.name,
                    &self.namespace,
                    &self.instance,
                    &parsed.as_text(),
                );
                logging::replica_event(parsed.level, &self.name, &self.instance, &parsed.text);
                Some(parsed)
            }
            None => {
                self.logs
                    .push(&self.name, &self.namespace, &self.instance, line);
                let (level, text) = logging::text_line_event(line);
                logging::replica_event(level, &self.name, &self.instance, text);
                None
            }
        }
    }
}
