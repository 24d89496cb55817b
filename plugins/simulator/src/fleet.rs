//! The demo fleet generated on first start, and the static layout of newly created machines.

use std::collections::BTreeMap;
use std::time::Instant;

use orchard_plugin_api::{DiskInfo, MachineInfo, MachineKind, MachineStatus};

use crate::model::{Machine, Mix, TAG_FAIL_BOOT};

const GIB: u64 = 1 << 30;

/// Roles the demo machines cycle through (a tag and a word of description each).
const ROLES: [(&str, &str); 8] = [
    ("web", "web front end"),
    ("db", "database server"),
    ("cache", "cache node"),
    ("build", "build worker"),
    ("api", "API server"),
    ("queue", "message broker"),
    ("monitor", "monitoring stack"),
    ("batch", "batch job runner"),
];
const VM_VCPU: [u32; 8] = [2, 4, 1, 8, 2, 6, 4, 3];
const VM_RAM: [u64; 8] = [2048, 4096, 1024, 8192, 16384, 4096, 512, 3072];
const VM_DISK_GIB: [u64; 5] = [20, 40, 32, 64, 80];
const CT_VCPU: [u32; 4] = [1, 2, 4, 1];
const CT_RAM: [u64; 4] = [512, 1024, 2048, 768];
const CT_DISK_GIB: [u64; 4] = [4, 8, 10, 16];

fn pick<T: Copy>(table: &[T], i: u64, fallback: T) -> T {
    let len = table.len() as u64;
    if len == 0 {
        return fallback;
    }
    table.get((i % len) as usize).copied().unwrap_or(fallback)
}

/// The guest address of the `seq`-th machine: `10.77.x.y`, y in 1–254.
pub(crate) fn address(seq: u64) -> String {
    let host = seq + 9;
    format!("10.77.{}.{}", (host / 254) % 256, host % 254 + 1)
}

/// `ssh` (and for VMs a `vnc` display on the host) for the `seq`-th machine.
pub(crate) fn connections(seq: u64, kind: MachineKind) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    c.insert("ssh".to_owned(), format!("{}:22", address(seq)));
    if kind == MachineKind::Vm {
        c.insert(
            "vnc".to_owned(),
            format!("127.0.0.1:{}", 5900 + seq % 50_000),
        );
    }
    c
}

/// The boot disk: `vda` (qcow2) for a VM, `rootfs` (overlay) for a container.
pub(crate) fn system_disk(kind: MachineKind, size_gib: u64) -> DiskInfo {
    let (name, kind) = match kind {
        MachineKind::Vm => ("vda", "qcow2"),
        MachineKind::Container => ("rootfs", "overlay"),
    };
    DiskInfo {
        system: true,
        name: name.to_owned(),
        size_bytes: size_gib * GIB,
        kind: kind.to_owned(),
    }
}

/// Size of the system disk of a machine created through the API.
pub(crate) fn created_disk_gib(kind: MachineKind) -> u64 {
    match kind {
        MachineKind::Vm => 20,
        MachineKind::Container => 8,
    }
}

fn data_disk(kind: MachineKind, i: u64) -> DiskInfo {
    let (name, kind, size) = match kind {
        MachineKind::Vm => ("vdb", "raw", pick(&[100, 250, 500], i, 100)),
        MachineKind::Container => ("data", "volume", pick(&[20, 50], i, 20)),
    };
    DiskInfo {
        system: false,
        name: name.to_owned(),
        size_bytes: size * GIB,
        kind: kind.to_owned(),
    }
}

/// `count` demo machines (see the crate documentation for the layout).
pub(crate) fn generate(count: u32, now: Instant, wall_ms: i64) -> Vec<Machine> {
    let width = count.to_string().len().max(2);
    (1..=u64::from(count))
        .map(|i| {
            let kind = if i % 3 == 0 {
                MachineKind::Container
            } else {
                MachineKind::Vm
            };
            let (role, what) = pick(&ROLES, i - 1, ("web", "web front end"));
            let (vcpu, ram, disk_gib, prefix, noun) = match kind {
                MachineKind::Vm => (
                    pick(&VM_VCPU, i - 1, 2),
                    pick(&VM_RAM, i - 1, 2048),
                    pick(&VM_DISK_GIB, i - 1, 20),
                    "vm",
                    "VM",
                ),
                MachineKind::Container => (
                    pick(&CT_VCPU, i / 3, 1),
                    pick(&CT_RAM, i / 3, 512),
                    pick(&CT_DISK_GIB, i / 3, 8),
                    "ct",
                    "container",
                ),
            };
            let fail_boot = count >= 3 && i == 2;
            let mut tags = vec!["demo".to_owned(), role.to_owned()];
            let mut description = format!("Simulated {what} ({noun})");
            if fail_boot {
                tags.push(TAG_FAIL_BOOT.to_owned());
                description = format!("Simulated {what} ({noun}) that always fails to boot");
            }
            let mut disks = vec![system_disk(kind, disk_gib)];
            if i % 4 == 2 {
                disks.push(data_disk(kind, i / 4));
            }
            let info = MachineInfo {
                uuid: uuid::Uuid::new_v4().to_string(),
                title: format!("sim-{prefix}-{i:0width$}"),
                description,
                tags,
                kind,
                vcpu,
                ram_max_mib: ram,
                connections: connections(i, kind),
                disks,
            };
            let running = i % 2 == 1 && !fail_boot;
            let status = if running {
                MachineStatus::Running
            } else {
                MachineStatus::Stopped
            };
            let mut m = Machine::new(info, status);
            // A history: up to a month of past running time, and machines that have been
            // up for minutes to days.
            let mut r = Mix::from_text(&m.info.uuid);
            m.run.lifetime_base = r.range(0.0, 30.0 * 86_400.0);
            if running {
                let uptime = r.range(300.0, 6.0 * 86_400.0);
                m.run.boot(now, wall_ms - (uptime * 1000.0) as i64);
                m.run.active_base = uptime;
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(address(1), "10.77.0.11");
        assert_eq!(address(244), "10.77.0.254");
        assert_eq!(address(245), "10.77.1.1");
    }

    #[test]
    fn layout() {
        let fleet = generate(12, Instant::now(), 1_700_000_000_000);
        assert_eq!(fleet.len(), 12);
        assert_eq!(fleet[0].info.title, "sim-vm-01");
        assert_eq!(fleet[2].info.title, "sim-ct-03");
        assert_eq!(fleet[11].info.title, "sim-ct-12");
        assert_eq!(generate(100, Instant::now(), 0)[0].info.title, "sim-vm-001");
        let fail: Vec<_> = fleet.iter().filter(|m| m.fail_boot).collect();
        assert_eq!(fail.len(), 1);
        assert_eq!(fail[0].status, MachineStatus::Stopped);
        assert_eq!(
            generate(2, Instant::now(), 0)
                .iter()
                .filter(|m| m.fail_boot)
                .count(),
            0
        );
        let running = fleet
            .iter()
            .filter(|m| m.status == MachineStatus::Running)
            .count();
        assert_eq!(running, 6);
        for m in &fleet {
            assert!((1..=8).contains(&m.info.vcpu));
            assert!((512..=16384).contains(&m.info.ram_max_mib));
            let system = &m.info.disks[0];
            assert!(system.system);
            match m.info.kind {
                MachineKind::Vm => {
                    assert_eq!(system.kind, "qcow2");
                    assert!(m.info.connections.contains_key("vnc"));
                }
                MachineKind::Container => assert_eq!(system.kind, "overlay"),
            }
            assert!(m.info.connections["ssh"].starts_with("10.77.0."));
            assert_eq!(m.run.boot_ts.is_some(), m.status == MachineStatus::Running);
        }
        assert!(fleet.iter().any(|m| m.info.disks.len() == 2));
    }
}
