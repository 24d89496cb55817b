//! Pure mappings between the engine's documents and Orchard's: machine uuids, labels and tags,
//! names, statuses, published ports, and the figures of a one-shot stats sample.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerStateStatusEnum, ContainerStatsResponse, ContainerSummaryStateEnum, PortMap,
};
use orchard_plugin_api::MachineStatus;
use sha2::{Digest, Sha256};

/// Labels this plugin keeps its own metadata in (never shown as tags).
pub const LABEL_PREFIX: &str = "org.orchard.";
pub const LABEL_TITLE: &str = "org.orchard.title";
pub const LABEL_DESCRIPTION: &str = "org.orchard.description";
/// A tag of this form on create names the image (`image=busybox:1.36`).
pub const IMAGE_TAG: &str = "image=";

/// The machine uuid of a container: derived from its id alone, so it is the same on every
/// start of the daemon and for every engine restart (a UUIDv8 over SHA-256 of the id).
pub fn machine_uuid(container_id: &str) -> String {
    let digest = Sha256::digest(format!("orchard-containers:{container_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).to_string()
}

/// A container's labels as Orchard tags (`key=value`, or `key` for an empty value), sorted;
/// this plugin's own labels are left out.
pub fn tags_from_labels(labels: &HashMap<String, String>) -> Vec<String> {
    let mut tags: Vec<String> = labels
        .iter()
        .filter(|(k, _)| !k.starts_with(LABEL_PREFIX))
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    tags.sort();
    tags
}

/// What a create spec's tags mean: labels, and the image when a tag names one.
pub fn labels_from_tags(tags: &[String]) -> (HashMap<String, String>, Option<String>) {
    let mut labels = HashMap::new();
    let mut image = None;
    for t in tags {
        if let Some(i) = t.strip_prefix(IMAGE_TAG) {
            image = Some(i.to_owned());
            continue;
        }
        let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
        if !k.is_empty() && !k.starts_with(LABEL_PREFIX) {
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    (labels, image)
}

/// An engine container name for a title: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63 bytes.
pub fn container_name(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        let ok = c.is_ascii_alphanumeric() || (!out.is_empty() && matches!(c, '_' | '.' | '-'));
        if ok {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 63 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        "orchard".into()
    } else {
        out
    }
}

/// The engine's state of a container (`running`, `exited`, …, as both a listing and an
/// inspect spell it) as an Orchard status (off: stopped; the caller keeps an `error` it
/// reported).
pub fn status_of(state: &str) -> MachineStatus {
    match state {
        "running" => MachineStatus::Running,
        "paused" => MachineStatus::Paused,
        "restarting" => MachineStatus::Booting,
        "removing" | "stopping" => MachineStatus::ShuttingDown,
        "dead" => MachineStatus::Error,
        _ => MachineStatus::Stopped,
    }
}

pub fn status_of_summary(state: Option<ContainerSummaryStateEnum>) -> MachineStatus {
    state.map_or(MachineStatus::Stopped, |s| status_of(s.as_ref()))
}

/// The same from an inspect document: the live state (a listing may lag an event by a few
/// milliseconds).
pub fn status_of_inspect(state: Option<ContainerStateStatusEnum>) -> MachineStatus {
    state.map_or(MachineStatus::Stopped, |s| status_of(s.as_ref()))
}

/// Published ports as connections: `"80/tcp"` → `"0.0.0.0:8080"` (every binding, comma
/// separated).
pub fn connections(ports: Option<&PortMap>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(ports) = ports else {
        return out;
    };
    for (port, bindings) in ports {
        let list: Vec<String> = bindings
            .iter()
            .flatten()
            .filter_map(|b| {
                let hp = b.host_port.as_deref().filter(|p| !p.is_empty())?;
                let ip = b
                    .host_ip
                    .as_deref()
                    .filter(|i| !i.is_empty())
                    .unwrap_or("0.0.0.0");
                Some(if ip.contains(':') {
                    format!("[{ip}]:{hp}")
                } else {
                    format!("{ip}:{hp}")
                })
            })
            .collect();
        if !list.is_empty() {
            out.insert(port.clone(), list.join(","));
        }
    }
    out
}

/// The figures of one stats sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Total CPU time used, in ns.
    pub cpu_ns: u64,
    pub online_cpus: u32,
    pub mem_used: u64,
    pub net_rx: u64,
    pub net_tx: u64,
    pub disk_read: u64,
    pub disk_write: u64,
}

pub fn sample(s: &ContainerStatsResponse) -> Sample {
    let cpu = s.cpu_stats.as_ref();
    let mem = s.memory_stats.as_ref();
    // Memory in use without the page cache, as `docker stats` shows it (cgroup v2 calls it
    // inactive_file, v1 total_inactive_file).
    let mem_used = mem.and_then(|m| m.usage).map_or(0, |usage| {
        let cache = mem
            .and_then(|m| m.stats.as_ref())
            .and_then(|st| {
                st.get("inactive_file")
                    .or_else(|| st.get("total_inactive_file"))
                    .copied()
            })
            .unwrap_or(0);
        usage.saturating_sub(cache)
    });
    let (mut net_rx, mut net_tx) = (0u64, 0u64);
    for n in s.networks.iter().flat_map(|n| n.values()) {
        net_rx = net_rx.saturating_add(n.rx_bytes.unwrap_or(0));
        net_tx = net_tx.saturating_add(n.tx_bytes.unwrap_or(0));
    }
    let (mut disk_read, mut disk_write) = (0u64, 0u64);
    let io = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref());
    for e in io.into_iter().flatten() {
        let v = e.value.unwrap_or(0);
        match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => disk_read = disk_read.saturating_add(v),
            Some("write") => disk_write = disk_write.saturating_add(v),
            _ => {}
        }
    }
    Sample {
        cpu_ns: cpu
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0),
        online_cpus: cpu.and_then(|c| c.online_cpus).unwrap_or(0),
        mem_used,
        net_rx,
        net_tx,
        disk_read,
        disk_write,
    }
}

/// CPU use between two samples `wall_ns` apart, as a percentage of `vcpu` CPUs (0–100).
pub fn cpu_percent(before_ns: u64, after_ns: u64, wall_ns: u128, vcpu: u32) -> f64 {
    if wall_ns == 0 || after_ns < before_ns {
        return 0.0;
    }
    ((after_ns - before_ns) as f64 / wall_ns as f64 / f64::from(vcpu.max(1)) * 100.0)
        .clamp(0.0, 100.0)
}

/// vCPUs of a container: its CPU limit rounded up, else the host's.
pub fn vcpus(nano_cpus: Option<i64>, quota: Option<i64>, period: Option<i64>, host: u32) -> u32 {
    let limit = match (nano_cpus, quota, period) {
        (Some(n), _, _) if n > 0 => Some(n as f64 / 1e9),
        (_, Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
        _ => None,
    };
    limit.map_or(host.max(1), |c| (c.ceil() as u32).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::PortBinding;

    #[test]
    fn uuids_are_stable_and_distinct() {
        let a = machine_uuid("0d79ed2803a12c7166d15726d81d9de28206cda982a2c5eb42e81431782b91e4");
        assert_eq!(
            a,
            machine_uuid("0d79ed2803a12c7166d15726d81d9de28206cda982a2c5eb42e81431782b91e4")
        );
        assert_ne!(a, machine_uuid("0d79ed2803a1"));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 8);
    }

    #[test]
    fn tags_and_labels_round_trip() {
        let (labels, image) = labels_from_tags(&[
            "env=prod".into(),
            "web".into(),
            "image=busybox:1".into(),
            "org.orchard.title=x".into(),
        ]);
        assert_eq!(image.as_deref(), Some("busybox:1"));
        assert_eq!(labels.len(), 2);
        let mut with_own = labels.clone();
        with_own.insert(LABEL_TITLE.into(), "t".into());
        assert_eq!(tags_from_labels(&with_own), ["env=prod", "web"]);
    }

    #[test]
    fn names_follow_the_engine_rules() {
        assert_eq!(container_name("My web box!"), "My-web-box");
        assert_eq!(container_name("  -x_y.z"), "x_y.z");
        assert_eq!(container_name("ééé"), "orchard");
        assert!(container_name(&"a".repeat(300)).len() <= 63);
    }

    #[test]
    fn engine_states() {
        assert_eq!(
            status_of_summary(Some(ContainerSummaryStateEnum::RUNNING)),
            MachineStatus::Running
        );
        assert_eq!(
            status_of_inspect(Some(ContainerStateStatusEnum::PAUSED)),
            MachineStatus::Paused
        );
        assert_eq!(
            status_of_inspect(Some(ContainerStateStatusEnum::EXITED)),
            MachineStatus::Stopped
        );
        assert_eq!(status_of("dead"), MachineStatus::Error);
    }

    #[test]
    fn ports_become_connections() {
        let mut ports = PortMap::new();
        ports.insert(
            "80/tcp".into(),
            Some(vec![PortBinding {
                host_ip: Some(String::new()),
                host_port: Some("8080".into()),
            }]),
        );
        ports.insert("53/udp".into(), None);
        let c = connections(Some(&ports));
        assert_eq!(c.len(), 1);
        assert_eq!(c["80/tcp"], "0.0.0.0:8080");
    }

    #[test]
    fn cpu_figures() {
        assert_eq!(cpu_percent(0, 1_000_000_000, 1_000_000_000, 1), 100.0);
        assert_eq!(cpu_percent(0, 500_000_000, 1_000_000_000, 2), 25.0);
        assert_eq!(cpu_percent(5, 1, 1, 1), 0.0);
        assert_eq!(vcpus(Some(1_500_000_000), None, None, 8), 2);
        assert_eq!(vcpus(None, Some(50_000), Some(100_000), 8), 1);
        assert_eq!(vcpus(None, None, None, 8), 8);
    }
}
