//! Where a job's energy comes from: one [`EnergySource`] trait over
//!
//! - [`Rapl`]: Intel/AMD RAPL package counters (`/sys/class/powercap/intel-rapl:N`), where
//!   the operating system lets this process read them (`measured`): the package's energy
//!   over the job's interval, shared by the job's part of the CPU time spent meanwhile;
//! - [`ThreadModel`]: busy CPU time × watts per thread, plus memory held × watts per GB
//!   (`modelled`; CodeCarbon's fallback constants by default: 4 W per thread, 0.375 W/GB);
//! - [`DeviceModel`]: a page's busy time × its device class's watts (`modelled`: browsers
//!   expose no power readings);
//! - [`Nvml`] (feature `nvml`): NVIDIA GPUs' energy counters, added to the CPU's by
//!   [`Combined`] where NVML reads them (`measured`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::formula::energy_of_power;
use crate::{Energy, Method, Usage};

/// A reading taken when a job starts (counters' values and when they were read; nothing
/// for a model; each part's own for a [`Combined`] source).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mark {
    counters: Option<(Vec<u64>, Instant)>,
    parts: Vec<Mark>,
}

impl Mark {
    fn of(counters: Option<Vec<u64>>) -> Self {
        Self {
            counters: counters.map(|v| (v, Instant::now())),
            parts: Vec::new(),
        }
    }
}

/// A source of a job's energy.
pub trait EnergySource: Send + Sync {
    /// A short name (`rapl`, `thread-model`, `device-model`).
    fn name(&self) -> &'static str;
    /// How its figures are obtained.
    fn method(&self) -> Method;
    /// A reading at a job's start.
    fn mark(&self) -> Mark {
        Mark::default()
    }
    /// The energy of a job that started at `since` and used `usage`.
    fn energy(&self, since: Mark, usage: &Usage) -> Energy;
}

/// The thread model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadModel {
    /// Watts per busy thread, mW.
    pub mw_per_thread: u32,
    /// Watts per GB of memory held, mW.
    pub mw_per_gb: u32,
}

impl Default for ThreadModel {
    /// CodeCarbon's constants where no TDP is known: 4 W per thread, 0.375 W per GB.
    fn default() -> Self {
        Self {
            mw_per_thread: 4_000,
            mw_per_gb: 375,
        }
    }
}

impl EnergySource for ThreadModel {
    fn name(&self) -> &'static str {
        "thread-model"
    }

    fn method(&self) -> Method {
        Method::Modelled
    }

    fn energy(&self, _: Mark, usage: &Usage) -> Energy {
        let cpu = energy_of_power(u64::from(self.mw_per_thread), usage.cpu);
        // mW/GB × bytes / 10⁹ = mW.
        let memory_mw = u64::try_from(
            u128::from(self.mw_per_gb) * u128::from(usage.memory_bytes) / 1_000_000_000,
        )
        .unwrap_or(u64::MAX);
        cpu.plus(energy_of_power(memory_mw, usage.wall))
    }
}

/// A browser's device class (the SDK infers it from the user agent and screen, or the site
/// declares it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// A phone.
    Phone,
    /// A tablet.
    Tablet,
    /// A laptop.
    Laptop,
    /// A desktop computer.
    Desktop,
}

/// A page's energy: busy time × its device class's watts while computing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceModel {
    /// The device class.
    pub class: DeviceClass,
}

impl DeviceClass {
    /// Watts drawn above idle while a page computes, mW: rough figures for one busy core
    /// of each class's typical processor (a phone SoC's big core, a laptop's and a desktop's
    /// package under single-thread load).
    pub fn busy_mw(self) -> u64 {
        match self {
            Self::Phone => 2_000,
            Self::Tablet => 3_500,
            Self::Laptop => 8_000,
            Self::Desktop => 20_000,
        }
    }
}

impl EnergySource for DeviceModel {
    fn name(&self) -> &'static str {
        "device-model"
    }

    fn method(&self) -> Method {
        Method::Modelled
    }

    fn energy(&self, _: Mark, usage: &Usage) -> Energy {
        // Busy time: the CPU time the page's engine used (threads included).
        energy_of_power(self.class.busy_mw(), usage.cpu)
    }
}

/// RAPL package counters.
#[derive(Debug, Clone)]
pub struct Rapl {
    /// Each package domain's `energy_uj` file and its wrap-around range.
    domains: Vec<(PathBuf, u64)>,
    /// Logical CPUs: the job's share is its CPU time over wall time × CPUs.
    cpus: u32,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Rapl {
    /// The package domains under `root` (`/sys/class/powercap`) whose counters this process
    /// can read; `None` when there are none (no RAPL, or not readable: a container, a VM,
    /// Linux ≥ 5.10 without root).
    pub fn open(root: &Path, cpus: u32) -> Option<Self> {
        let mut domains = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for dir in entries {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // Top-level package domains only (`intel-rapl:0`, not `intel-rapl:0:1`).
            if !(name.starts_with("intel-rapl:") && name.matches(':').count() == 1) {
                continue;
            }
            let energy = dir.join("energy_uj");
            let range = read_u64(&dir.join("max_energy_range_uj")).unwrap_or(u64::MAX);
            if read_u64(&energy).is_some() {
                domains.push((energy, range));
            }
        }
        (!domains.is_empty()).then_some(Self {
            domains,
            cpus: cpus.max(1),
        })
    }

    /// The host's RAPL, if readable.
    pub fn host() -> Option<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::open(
            Path::new("/sys/class/powercap"),
            u32::try_from(cpus).unwrap_or(u32::MAX),
        )
    }

    fn read(&self) -> Option<Vec<u64>> {
        self.domains.iter().map(|(p, _)| read_u64(p)).collect()
    }
}

impl EnergySource for Rapl {
    fn name(&self) -> &'static str {
        "rapl"
    }

    fn method(&self) -> Method {
        Method::Measured
    }

    fn mark(&self) -> Mark {
        Mark::of(self.read())
    }

    fn energy(&self, since: Mark, usage: &Usage) -> Energy {
        let (Some((start, at)), Some(now)) = (since.counters, self.read()) else {
            return Energy(0);
        };
        // Each package's delta, across a wrap-around of its counter.
        let package_uj: u128 = (self.domains.iter().zip(start).zip(now))
            .map(|(((_, range), a), b)| {
                u128::from(if b >= a {
                    b - a
                } else {
                    range.saturating_sub(a).saturating_add(b)
                })
            })
            .sum();
        // The job's share of the packages: its CPU time over all CPUs' time since the mark
        // (at least over the job's own wall time).
        let capacity_ms = at.elapsed().max(usage.wall).as_millis() * u128::from(self.cpus);
        let share_uj = (package_uj * usage.cpu.as_millis().min(capacity_ms))
            .checked_div(capacity_ms)
            .unwrap_or(0);
        Energy::from_uj(u64::try_from(share_uj).unwrap_or(u64::MAX))
    }
}

/// Sources whose energies add: the CPU's and a GPU's.
pub struct Combined {
    parts: Vec<Box<dyn EnergySource>>,
    name: &'static str,
}

impl std::fmt::Debug for Combined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combined")
            .field("name", &self.name)
            .finish()
    }
}

impl Combined {
    /// `cpu` and `gpu` together, named `name` (e.g. `rapl+nvml`).
    pub fn new(cpu: Box<dyn EnergySource>, gpu: Box<dyn EnergySource>, name: &'static str) -> Self {
        Self {
            parts: vec![cpu, gpu],
            name,
        }
    }
}

impl EnergySource for Combined {
    fn name(&self) -> &'static str {
        self.name
    }

    fn method(&self) -> Method {
        (self.parts.iter()).fold(Method::Measured, |m, p| m.weakest(p.method()))
    }

    fn mark(&self) -> Mark {
        Mark {
            counters: None,
            parts: self.parts.iter().map(|p| p.mark()).collect(),
        }
    }

    fn energy(&self, since: Mark, usage: &Usage) -> Energy {
        let mut marks = since.parts.into_iter();
        (self.parts.iter()).fold(Energy(0), |e, p| {
            e.plus(p.energy(marks.next().unwrap_or_default(), usage))
        })
    }
}

/// A GPU's share of the energy its counters (µJ, summed over the devices) moved from
/// `start` to `now` over `elapsed`: a job of `wall` gets `wall / elapsed` of it (the GPU's
/// work between two readings belongs to the jobs that ran then; its idle draw too).
pub fn gpu_share(start: &[u64], now: &[u64], elapsed: Duration, wall: Duration) -> Energy {
    let delta_uj: u128 = (start.iter().zip(now))
        .map(|(a, b)| u128::from(b.saturating_sub(*a)))
        .sum();
    let elapsed_us = elapsed.max(wall).as_micros();
    let share = (delta_uj * wall.as_micros())
        .checked_div(elapsed_us)
        .unwrap_or(0);
    Energy::from_uj(u64::try_from(share).unwrap_or(u64::MAX))
}

/// NVIDIA GPUs' energy counters through NVML (the driver's `libnvidia-ml`, loaded at run
/// time; Volta and newer): `measured`.
#[cfg(feature = "nvml")]
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    devices: u32,
}

#[cfg(feature = "nvml")]
impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml")
            .field("devices", &self.devices)
            .finish()
    }
}

#[cfg(feature = "nvml")]
impl Nvml {
    /// Opens NVML with every GPU whose energy counter reads; why not, where it cannot (no
    /// driver, no GPU, a GPU without the counter).
    pub fn open() -> Result<Self, String> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML: {e}"))?;
        let devices = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
        if devices == 0 {
            return Err("NVML: no GPU".into());
        }
        let me = Self { nvml, devices };
        me.read()
            .ok_or_else(|| "NVML: a GPU without an energy counter".to_owned())?;
        Ok(me)
    }

    /// Each device's counter, µJ.
    fn read(&self) -> Option<Vec<u64>> {
        (0..self.devices)
            .map(|i| {
                let mj = self
                    .nvml
                    .device_by_index(i)
                    .ok()?
                    .total_energy_consumption()
                    .ok()?;
                Some(mj.saturating_mul(1_000))
            })
            .collect()
    }
}

#[cfg(feature = "nvml")]
impl EnergySource for Nvml {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn method(&self) -> Method {
        Method::Measured
    }

    fn mark(&self) -> Mark {
        Mark::of(self.read())
    }

    fn energy(&self, since: Mark, usage: &Usage) -> Energy {
        match (since.counters, self.read()) {
            (Some((start, at)), Some(now)) => gpu_share(&start, &now, at.elapsed(), usage.wall),
            _ => Energy(0),
        }
    }
}

/// The best source on this host: RAPL where readable, else the thread model; with the
/// `nvml` feature, plus the GPUs' energy counters where NVML reads them.
pub fn host_source() -> Box<dyn EnergySource> {
    let cpu: Box<dyn EnergySource> = match Rapl::host() {
        Some(r) => Box::new(r),
        None => Box::new(ThreadModel::default()),
    };
    // No driver, no GPU or no counter: the CPU's figures alone (the source's name says
    // which were used).
    #[cfg(feature = "nvml")]
    if let Ok(gpu) = Nvml::open() {
        let name = if cpu.name() == "rapl" {
            "rapl+nvml"
        } else {
            "thread-model+nvml"
        };
        return Box::new(Combined::new(cpu, Box::new(gpu), name));
    }
    cpu
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    /// Busy time helper: a [`Usage`] of `wall` with `threads` threads busy throughout.
    fn busy(wall: Duration, threads: u32, memory_bytes: u64) -> Usage {
        Usage {
            wall,
            cpu: wall.saturating_mul(threads),
            memory_bytes,
        }
    }

    #[test]
    fn the_thread_model_by_hand() {
        // 2 threads busy 1.8 s at 4 W = 14.4 J = 4,000 µWh; 1 GB held for 1.8 s at
        // 0.375 W = 0.675 J = 187.5 µWh.
        let u = busy(Duration::from_millis(1_800), 2, 1_000_000_000);
        let e = ThreadModel::default().energy(Mark::default(), &u);
        assert_eq!(e, Energy(4_000 + 188));
        assert_eq!(ThreadModel::default().method(), Method::Modelled);
    }

    /// A GPU counter source by hand: two readings, the job's share of the delta.
    #[test]
    fn a_gpus_energy_is_shared_by_wall_time_and_adds_to_the_cpus() {
        // Two GPUs moved 30 J and 6 J in 2 s; a job of 0.5 s gets a quarter: 9 J = 2,500 µWh.
        let start = [1_000_000, 5_000_000];
        let now = [31_000_000, 11_000_000];
        let e = gpu_share(
            &start,
            &now,
            Duration::from_secs(2),
            Duration::from_millis(500),
        );
        assert_eq!(e, Energy(2_500));
        // A job longer than the interval (its mark taken late) gets the whole delta, a
        // counter that went back (a driver reload) nothing.
        assert_eq!(
            gpu_share(&start, &now, Duration::from_secs(1), Duration::from_secs(3)),
            Energy(10_000)
        );
        assert_eq!(
            gpu_share(&now, &start, Duration::from_secs(2), Duration::from_secs(2)),
            Energy(0)
        );
        // Combined: the parts' energies add, its method is the weakest.
        let both = Combined::new(
            Box::new(ThreadModel::default()),
            Box::new(DeviceModel {
                class: DeviceClass::Laptop,
            }),
            "thread-model+device",
        );
        let u = busy(Duration::from_millis(1_800), 2, 0);
        let alone = ThreadModel::default().energy(Mark::default(), &u);
        let device = DeviceModel {
            class: DeviceClass::Laptop,
        }
        .energy(Mark::default(), &u);
        assert_eq!(both.energy(both.mark(), &u), alone.plus(device));
        assert_eq!(
            (both.name(), both.method()),
            ("thread-model+device", Method::Modelled)
        );
    }

    /// Where NVML cannot open (no driver here), it says why, and the host's source is the
    /// CPU's alone; where it opens, its counters read and a job's share is not negative.
    #[cfg(feature = "nvml")]
    #[test]
    fn nvml_reads_where_a_driver_is_and_says_why_not_elsewhere() {
        match Nvml::open() {
            Ok(gpu) => {
                let m = gpu.mark();
                std::thread::sleep(Duration::from_millis(50));
                let u = busy(Duration::from_millis(50), 1, 0);
                let _ = gpu.energy(m, &u);
                assert!(host_source().name().ends_with("+nvml"));
            }
            Err(why) => {
                assert!(why.starts_with("NVML: "), "{why}");
                assert!(!host_source().name().contains("nvml"));
            }
        }
    }

    #[test]
    fn the_device_model_by_hand() {
        let u = busy(Duration::from_secs(9), 1, 0);
        // A laptop: 8 W × 9 s = 72 J = 20 mWh.
        let e = DeviceModel {
            class: DeviceClass::Laptop,
        }
        .energy(Mark::default(), &u);
        assert_eq!(e.mwh(), 20);
        let phone = DeviceModel {
            class: DeviceClass::Phone,
        }
        .energy(Mark::default(), &u);
        assert_eq!(phone, Energy(5_000));
    }

    #[test]
    fn rapl_reads_counters_shares_them_and_survives_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("intel-rapl:0");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(dir.path().join("intel-rapl:0:0")).unwrap(); // a subdomain
        std::fs::write(pkg.join("energy_uj"), "1000000\n").unwrap();
        std::fs::write(pkg.join("max_energy_range_uj"), "262143328850\n").unwrap();
        let rapl = Rapl::open(dir.path(), 4).unwrap();
        assert_eq!(rapl.method(), Method::Measured);
        let mark = rapl.mark();
        // 36 J later; the job used one of 4 CPUs for the whole second: 9 J = 2,500 µWh.
        std::fs::write(pkg.join("energy_uj"), "37000000\n").unwrap();
        let u = busy(Duration::from_secs(1), 1, 0);
        assert_eq!(rapl.energy(mark, &u), Energy(2_500));
        // The counter wrapped: range - start + now.
        std::fs::write(pkg.join("energy_uj"), "262143000000\n").unwrap();
        let mark = rapl.mark();
        std::fs::write(pkg.join("energy_uj"), "35671150\n").unwrap();
        let all = busy(Duration::from_secs(1), 4, 0);
        assert_eq!(rapl.energy(mark, &all), Energy::from_uj(36_000_000));
        // No readable domain: no RAPL.
        let empty = tempfile::tempdir().unwrap();
        assert!(Rapl::open(empty.path(), 4).is_none());
        assert!(Rapl::open(&empty.path().join("missing"), 4).is_none());
    }
}
