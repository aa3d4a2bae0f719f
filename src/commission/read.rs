//! `streamgate read`: the tags of a config read once, with the readers' own code.

use std::process::ExitCode;

use streamgate::app::config;

/// `streamgate read`: every selected tag once per round; exit 69 when a read failed, 2 when
/// the selection names no source or tag of the config.
pub fn tags(
    c: &config::Config,
    source: Option<&str>,
    tags: &[String],
    count: u32,
    interval: std::time::Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let selected: Vec<&config::SourceConfig> = c
        .sources
        .iter()
        .filter(|s| source.is_none_or(|id| s.id == id))
        .collect();
    if selected.is_empty() {
        let ids: Vec<&str> = c.sources.iter().map(|s| s.id.as_str()).collect();
        say!(
            "error: no source \"{}\" in the config (sources: {})",
            source.unwrap_or(""),
            ids.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut failed = false;
    let mut seen = std::collections::HashSet::new();
    if !json {
        out!(
            "{:<12} {:<24} {:>16} {:<9} {:>13} {:>8}  error",
            "source",
            "tag",
            "value",
            "quality",
            "timestamp",
            "ms"
        );
    }
    for round in 0..count.max(1) {
        if round > 0 {
            std::thread::sleep(interval);
        }
        for s in &selected {
            let reads = match rt.block_on(s.kind.read_once(&s.id, &c.gateway.data_dir, tags)) {
                Ok(reads) => reads,
                Err(why) => {
                    if round == 0 {
                        say!("note: source {}: {why}; skipped", s.id);
                    }
                    continue;
                }
            };
            for r in reads {
                seen.insert(r.tag.clone());
                failed |= r.error.is_some();
                if json {
                    let mut v = serde_json::to_value(&r)?;
                    v["source"] = serde_json::Value::from(s.id.as_str());
                    out!("{v}");
                } else {
                    let value = super::value_text(r.value.as_ref());
                    out!(
                        "{:<12} {:<24} {:>16} {:<9} {:>13} {:>8.1}  {}",
                        s.id,
                        r.tag,
                        value,
                        format!("{:?}", r.quality),
                        r.timestamp,
                        r.latency_ms,
                        r.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        if round == 0
            && let Some(missing) = tags.iter().find(|t| !seen.contains(*t))
        {
            say!("error: no tag \"{missing}\" in the selected source(s) that `read` reads");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(if failed {
        ExitCode::from(streamgate::app::daemon::exit::UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    })
}
