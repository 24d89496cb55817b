//! One simulated machine: its static properties, its status, and the clock-driven model that
//! turns "how long has it been running" into CPU, memory, I/O counters and disk usage.
//!
//! Nothing here keeps a timer: every figure is a pure function of the wall clock, the
//! machine's active time and a per-machine seed, so a sample costs a few floating-point
//! operations.

use std::time::Instant;

use orchard_plugin_api::{DiskUsage, MachineInfo, MachineState, MachineStatus};

use crate::clock;

/// Tag that makes every boot of a machine fail.
pub(crate) const TAG_FAIL_BOOT: &str = "fail-boot";
/// Tag that makes every graceful shutdown of a machine fail (it keeps running).
pub(crate) const TAG_FAIL_SHUTDOWN: &str = "fail-shutdown";

/// A small deterministic generator (SplitMix64), seeded per machine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mix(u64);

impl Mix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from arbitrary text (FNV-1a), so that a machine's figures follow its uuid.
    pub(crate) fn from_text(text: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(h)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// The per-machine constants of the load model, drawn once from the machine's seed.
#[derive(Clone, Debug)]
pub(crate) struct Profile {
    cpu_base: f64,
    /// (amplitude, period in seconds, phase) of three sines.
    cpu_waves: [(f64, f64, f64); 3],
    ram_fraction: f64,
    ram_wave: (f64, f64, f64),
    /// (bytes per second, wobble period in seconds) for rx, tx, read, write.
    io: [(f64, f64); 4],
    /// Per-disk seed for the occupied fraction.
    disk_seed: u64,
}

impl Profile {
    pub(crate) fn for_uuid(uuid: &str) -> Self {
        let mut r = Mix::from_text(uuid);
        let tau = std::f64::consts::TAU;
        let cpu_base = r.range(6.0, 45.0);
        let cpu_waves = [
            (r.range(8.0, 22.0), r.range(45.0, 110.0), r.range(0.0, tau)),
            (r.range(3.0, 10.0), r.range(11.0, 29.0), r.range(0.0, tau)),
            (r.range(1.0, 5.0), r.range(2.5, 7.0), r.range(0.0, tau)),
        ];
        let ram_fraction = r.range(0.25, 0.7);
        let ram_wave = (r.range(0.02, 0.1), r.range(120.0, 400.0), r.range(0.0, tau));
        let rx = r.range(20e3, 1.5e6);
        let tx = rx * r.range(0.2, 1.0);
        let read = r.range(50e3, 4e6);
        let write = read * r.range(0.2, 0.8);
        let io = [
            (rx, r.range(40.0, 120.0)),
            (tx, r.range(40.0, 120.0)),
            (read, r.range(40.0, 120.0)),
            (write, r.range(40.0, 120.0)),
        ];
        Self {
            cpu_base,
            cpu_waves,
            ram_fraction,
            ram_wave,
            io,
            disk_seed: r.next_u64(),
        }
    }

    /// CPU load in percent at wall time `t` (seconds): smooth, within 0–100.
    pub(crate) fn cpu(&self, t: f64) -> f64 {
        let mut c = self.cpu_base;
        for (amp, period, phase) in self.cpu_waves {
            c += amp * (t / period + phase).sin();
        }
        c.clamp(0.0, 100.0)
    }

    /// Memory in use at wall time `t` after `active` seconds of running; below `max`.
    pub(crate) fn ram_used(&self, max: u64, t: f64, active: f64) -> u64 {
        let (amp, period, phase) = self.ram_wave;
        let fraction = self.ram_fraction + amp * (t / period + phase).sin();
        // Memory fills up over the first minute after boot.
        let warm = (0.25 + active / 80.0).min(1.0);
        let used = (max as f64 * fraction * warm) as u64;
        used.min(max.saturating_sub(1))
    }

    /// Cumulative rx, tx, read and write bytes after `active` seconds: a per-machine rate
    /// with a wobble whose derivative stays positive, so the counters never go down.
    pub(crate) fn counters(&self, active: f64) -> [u64; 4] {
        let active = active.max(0.0);
        self.io.map(|(rate, period)| {
            let wobble = 0.5 * period * (1.0 - (active / period).cos());
            (rate * (active + wobble)) as u64
        })
    }

    /// Bytes occupied on disk `index` of `size` bytes after `lifetime` seconds of running.
    pub(crate) fn occupied(&self, index: usize, system: bool, size: u64, lifetime: f64) -> u64 {
        let mut r = Mix::new(self.disk_seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let base = if system {
            r.range(0.18, 0.55)
        } else {
            r.range(0.05, 0.6)
        };
        // About 2 % of the disk per day of running, up to nearly full.
        let growth = 0.02 * lifetime.max(0.0) / 86_400.0;
        (size as f64 * (base + growth).min(0.97)) as u64
    }
}

/// The clock side of a machine's life: when it booted and how long it has been active.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    /// When the machine became running (Unix ms), while it is up.
    pub boot_ms: Option<i64>,
    /// `boot_ms` as ISO 8601, formatted once.
    pub boot_ts: Option<String>,
    /// Seconds active in this run before `segment`.
    pub active_base: f64,
    /// Start of the current active stretch (running or shutting down).
    pub segment: Option<Instant>,
    /// Wall time (Unix seconds) the machine was frozen at (suspended or paused).
    pub frozen_at: f64,
    /// Seconds active in earlier runs.
    pub lifetime_base: f64,
}

impl Run {
    /// Seconds active in the current run.
    pub(crate) fn active(&self, now: Instant) -> f64 {
        self.active_base
            + self
                .segment
                .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64())
    }

    /// Seconds active over the machine's whole life.
    pub(crate) fn lifetime(&self, now: Instant) -> f64 {
        self.lifetime_base + self.active(now)
    }

    /// The machine just finished booting.
    pub(crate) fn boot(&mut self, now: Instant, wall_ms: i64) {
        self.boot_ms = Some(wall_ms);
        self.boot_ts = Some(clock::iso8601(wall_ms));
        self.active_base = 0.0;
        self.segment = Some(now);
    }

    /// Stops the clocks (suspend, pause).
    pub(crate) fn freeze(&mut self, now: Instant, wall_s: f64) {
        self.active_base = self.active(now);
        self.segment = None;
        self.frozen_at = wall_s;
    }

    /// Restarts the clocks (resume, or a frozen machine shutting down).
    pub(crate) fn thaw(&mut self, now: Instant) {
        if self.segment.is_none() {
            self.segment = Some(now);
        }
    }

    /// The machine is off: the run's time goes to the lifetime total.
    pub(crate) fn end(&mut self, now: Instant) {
        self.lifetime_base = self.lifetime(now);
        self.boot_ms = None;
        self.boot_ts = None;
        self.active_base = 0.0;
        self.segment = None;
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Machine {
    pub info: MachineInfo,
    pub status: MachineStatus,
    pub profile: Profile,
    pub run: Run,
    pub fail_boot: bool,
    pub fail_shutdown: bool,
    /// `info` as JSON, rendered when it changes so that saving the fleet is mostly copying.
    pub info_json: Vec<u8>,
    /// Console sessions open on this machine, oldest first.
    pub sessions: Vec<String>,
    /// Bumped by every transition; a scheduled step carrying an older value is stale.
    pub token: u64,
}

impl Machine {
    pub(crate) fn new(info: MachineInfo, status: MachineStatus) -> Self {
        let profile = Profile::for_uuid(&info.uuid);
        let mut m = Self {
            info,
            status,
            profile,
            run: Run::default(),
            fail_boot: false,
            fail_shutdown: false,
            info_json: Vec::new(),
            sessions: Vec::new(),
            token: 0,
        };
        m.info_changed();
        m
    }

    /// Call after changing `info`: re-reads the failure-injection tags and re-renders the
    /// JSON (left empty if that failed, which saving reports).
    pub(crate) fn info_changed(&mut self) {
        self.info_json = serde_json::to_vec(&self.info).unwrap_or_default();
        self.fail_boot = self.info.tags.iter().any(|t| t == TAG_FAIL_BOOT);
        self.fail_shutdown = self.info.tags.iter().any(|t| t == TAG_FAIL_SHUTDOWN);
    }

    /// Running or shutting down: the guest is alive and its clocks tick.
    pub(crate) fn is_active(&self) -> bool {
        matches!(
            self.status,
            MachineStatus::Running | MachineStatus::ShuttingDown
        )
    }

    /// The dynamic state at `now` (wall time `wall_s`, Unix seconds).
    pub(crate) fn state(&self, now: Instant, wall_s: f64) -> MachineState {
        let max = self.info.ram_max_mib;
        let p = &self.profile;
        let (cpu, ram, counters, boot) = match self.status {
            MachineStatus::Running | MachineStatus::ShuttingDown => {
                let active = self.run.active(now);
                (
                    p.cpu(wall_s),
                    p.ram_used(max, wall_s, active),
                    p.counters(active),
                    self.run.boot_ts.clone(),
                )
            }
            MachineStatus::Paused | MachineStatus::Suspended => {
                let active = self.run.active(now);
                (
                    0.0,
                    p.ram_used(max, self.run.frozen_at, active),
                    p.counters(active),
                    self.run.boot_ts.clone(),
                )
            }
            // Firmware and kernel start-up: busy CPU, memory just being touched.
            MachineStatus::Booting => (
                (p.cpu(wall_s) + 40.0).min(100.0),
                p.ram_used(max, wall_s, 0.0) / 2,
                [0; 4],
                None,
            ),
            MachineStatus::Stopped | MachineStatus::Error => (0.0, 0, [0; 4], None),
        };
        let [
            net_rx_bytes,
            net_tx_bytes,
            disk_read_bytes,
            disk_write_bytes,
        ] = counters;
        MachineState {
            uuid: self.info.uuid.clone(),
            status: self.status,
            vcpu: self.info.vcpu,
            cpu_percent: (cpu * 10.0).round() / 10.0,
            ram_max_mib: max,
            ram_used_mib: ram,
            boot_timestamp: boot,
            net_rx_bytes,
            net_tx_bytes,
            disk_read_bytes,
            disk_write_bytes,
        }
    }

    pub(crate) fn disk_usage(&self, now: Instant) -> Vec<DiskUsage> {
        let lifetime = self.run.lifetime(now);
        self.info
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskUsage {
                system: d.system,
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                kind: d.kind.clone(),
                occupied_bytes: self.profile.occupied(i, d.system, d.size_bytes, lifetime),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_bounded_and_smooth() {
        for id in ["a", "b", "c", "0b6f3c7e-8d1a-4b0e-9f6a-2f1f3c4d5e6f"] {
            let p = Profile::for_uuid(id);
            let mut last = p.cpu(1_700_000_000.0);
            for i in 1..2000 {
                let c = p.cpu(1_700_000_000.0 + f64::from(i));
                assert!((0.0..=100.0).contains(&c));
                // One second apart never jumps by more than a few points.
                assert!((c - last).abs() < 8.0, "{last} -> {c}");
                last = c;
            }
        }
    }

    #[test]
    fn counters_are_monotonic_and_ram_is_below_max() {
        let p = Profile::for_uuid("x");
        let mut last = [0u64; 4];
        for i in 0..5000 {
            let active = f64::from(i) * 0.7;
            let c = p.counters(active);
            for k in 0..4 {
                assert!(c[k] >= last[k]);
            }
            last = c;
            let r = p.ram_used(512, 1_700_000_000.0 + active, active);
            assert!(r < 512);
        }
        assert!(last.iter().all(|c| *c > 0));
    }

    #[test]
    fn disk_usage_grows_and_stays_below_size() {
        let p = Profile::for_uuid("y");
        let size = 20 << 30;
        let a = p.occupied(0, true, size, 0.0);
        let b = p.occupied(0, true, size, 86_400.0);
        let c = p.occupied(0, true, size, 1e12);
        assert!(a > 0 && a < b && b < c && c < size);
        assert_eq!(a, p.occupied(0, true, size, 0.0));
    }
}
