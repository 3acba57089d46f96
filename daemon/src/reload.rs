//! SIGHUP: re-reads the configuration (the file, the auth token file) and
//! applies what can change while the daemon runs: the log filter, the
//! memory and entry caps, the auth token. Every change is logged; so is
//! every setting that changed but needs a restart. A configuration that no
//! longer resolves is logged and ignored: the daemon never stops on a
//! reload.

use std::path::PathBuf;
use std::sync::Arc;

use cachet_storage::{Command, Reply};

use crate::config::{Options, Settings};
use crate::logging;
use crate::shared::Shared;

/// What a reload re-reads: the config file and the flags and environment
/// the daemon started with (which still win over the file).
pub struct Reload {
    pub config: Option<PathBuf>,
    pub opts: Options,
}

impl Reload {
    /// Re-reads the settings and applies them over `running`, which it
    /// updates to what now applies.
    pub async fn apply(&self, running: &mut Settings, shared: &Arc<Shared>) {
        let new = match Settings::resolve(self.config.as_ref(), self.opts.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reload: the configuration does not resolve, nothing changed: {e}");
                return;
            }
        };
        let mut changed = Vec::new();
        if new.log != running.log {
            match logging::set_filter(&new.log) {
                Ok(()) => {
                    changed.push(format!("log {:?} -> {:?}", running.log, new.log));
                    running.log = new.log.clone();
                }
                Err(e) => tracing::error!("reload: {e}"),
            }
        }
        if (new.max_memory, new.max_entries) != (running.max_memory, running.max_entries) {
            let cmd = Command::SetCaps { max_memory: new.max_memory, max_entries: new.max_entries };
            match shared.engine.call(cmd).await {
                Ok(Reply::Done) => {
                    if new.max_memory != running.max_memory {
                        changed.push(format!("max_memory {} -> {}", shown(running.max_memory), shown(new.max_memory)));
                    }
                    if new.max_entries != running.max_entries {
                        changed.push(format!(
                            "max_entries {} -> {}",
                            shown(running.max_entries),
                            shown(new.max_entries)
                        ));
                    }
                    running.max_memory = new.max_memory;
                    running.max_entries = new.max_entries;
                    shared.set_max_memory(new.max_memory);
                }
                other => tracing::error!("reload: the engine did not take the new caps: {other:?}"),
            }
        }
        if new.auth_token != running.auth_token {
            shared.set_token(new.auth_token.clone());
            changed.push(match &new.auth_token {
                Some(_) if running.auth_token.is_some() => {
                    "auth token replaced (new connections need the new one)".into()
                }
                Some(_) => "auth token required from now on (connections already open stay open)".into(),
                None => "auth token no longer required".into(),
            });
            running.auth_token = new.auth_token.clone();
        }
        let restart_only = restart_only_changes(running, &new);
        if !restart_only.is_empty() {
            tracing::warn!("reload: changed but applied only at a restart: {}", restart_only.join(", "));
        }
        if changed.is_empty() {
            tracing::info!("reload: nothing to change");
        } else {
            tracing::info!("reload: {}", changed.join("; "));
        }
    }
}

fn shown(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

/// The settings that differ and that only a restart applies.
fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("data_dir", old.data_dir != new.data_dir);
    check("sync", old.sync != new.sync);
    check("eviction", old.eviction != new.eviction);
    check("max_key_bytes", old.max_key_bytes != new.max_key_bytes);
    check("max_value_bytes", old.max_value_bytes != new.max_value_bytes);
    check("segment_bytes", old.segment_bytes != new.segment_bytes);
    check("compact_min_bytes", old.compact_min_bytes != new.compact_min_bytes);
    check("max_connections", old.max_connections != new.max_connections);
    check("max_in_flight", old.max_in_flight != new.max_in_flight);
    check("io_threads", old.io_threads != new.io_threads);
    check("metrics_listen", old.metrics_listen != new.metrics_listen);
    check("tls", old.tls != new.tls);
    check("log_format", old.log_format != new.log_format);
    check("slow_request_ms", old.slow_request != new.slow_request);
    out
}
