//! Where the executors run: one pinned glommio executor per core.

use std::io;

use glommio::{CpuSet, PoolPlacement};

/// How many executors and on which CPUs, from `--cores N` and `--cpus LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    /// Explicit CPU ids (one executor each), or empty to let glommio spread `cores`.
    pub cpus: Vec<usize>,
    /// Number of executors.
    pub cores: usize,
}

impl CorePlan {
    /// `cores` = 0 means every online CPU; a non-empty `cpus` wins over `cores`.
    pub fn new(cores: usize, cpus: Vec<usize>) -> CorePlan {
        let cores = if !cpus.is_empty() {
            cpus.len()
        } else if cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cores
        };
        CorePlan { cpus, cores }
    }

    /// The glommio placement for this plan.
    pub fn placement(&self) -> io::Result<PoolPlacement> {
        if self.cpus.is_empty() {
            return Ok(PoolPlacement::MaxSpread(self.cores, None));
        }
        let online = CpuSet::online().map_err(|e| io::Error::other(e.to_string()))?;
        let mut sets = Vec::with_capacity(self.cpus.len());
        for &cpu in &self.cpus {
            let set = online.clone().filter(|l| l.cpu == cpu);
            if set.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("CPU {cpu} is not online"),
                ));
            }
            sets.push(set);
        }
        Ok(PoolPlacement::Custom(sets))
    }
}

/// Parses `0,2-3` into `[0, 2, 3]`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list item {part:?} (expected N or N-M)");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(CorePlan::new(5, vec![1]).cores, 1);
        assert!(CorePlan::new(0, vec![]).cores >= 1);
    }
}
