//! Sets of CPUs in the two spellings the kernel uses: lists (`0-3,8`, as in
//! `/proc/irq/N/smp_affinity_list` and `/sys/devices/system/cpu/online`) and hexadecimal masks in
//! comma-separated 32-bit groups (`00000000,0000000f`, as in `xps_cpus` and `rps_cpus`).

use std::collections::BTreeSet;

/// CPUs above this are refused: a typo must not make a mask of a million digits.
pub const MAX_CPU: usize = 8191;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSet(pub BTreeSet<usize>);

impl CpuSet {
    pub fn of(cpus: impl IntoIterator<Item = usize>) -> CpuSet {
        CpuSet(cpus.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Parses `0-3,8` (whitespace around it ignored; empty = no CPU).
    pub fn parse_list(text: &str) -> Option<CpuSet> {
        let mut set = BTreeSet::new();
        for part in text.trim().split(',').filter(|p| !p.is_empty()) {
            let (lo, hi): (usize, usize) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
                None => {
                    let cpu = part.trim().parse().ok()?;
                    (cpu, cpu)
                }
            };
            if lo > hi || hi > MAX_CPU {
                return None;
            }
            set.extend(lo..=hi);
        }
        Some(CpuSet(set))
    }

    /// Parses a hexadecimal mask: `f`, `0000000f`, `00000000,0000000f`.
    pub fn parse_mask(text: &str) -> Option<CpuSet> {
        let digits: String = text.trim().chars().filter(|c| *c != ',').collect();
        if digits.is_empty() {
            return None;
        }
        let mut set = BTreeSet::new();
        for (i, c) in digits.chars().rev().enumerate() {
            let nibble = c.to_digit(16)? as usize;
            for bit in 0..4 {
                if nibble & (1 << bit) != 0 {
                    let cpu = i * 4 + bit;
                    if cpu > MAX_CPU {
                        return None;
                    }
                    set.insert(cpu);
                }
            }
        }
        Some(CpuSet(set))
    }

    /// `0-3,8`.
    pub fn to_list(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut cpus = self.0.iter().copied().peekable();
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            out.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
        out.join(",")
    }

    /// The mask in 32-bit groups, most significant first, as the kernel prints it.
    pub fn to_mask(&self) -> String {
        let top = self.0.iter().next_back().copied().unwrap_or(0);
        let groups = top / 32 + 1;
        let mut words = vec![0u32; groups];
        for &cpu in &self.0 {
            words[cpu / 32] |= 1 << (cpu % 32);
        }
        words
            .iter()
            .rev()
            .map(|w| format!("{w:08x}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print() {
        let set = CpuSet::parse_list("0-3,8, 10-11\n").unwrap();
        assert_eq!(set, CpuSet::of([0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(set.to_list(), "0-3,8,10-11");
        assert_eq!(CpuSet::parse_list("").unwrap(), CpuSet::default());
        assert!(CpuSet::parse_list("3-1").is_none());
        assert!(CpuSet::parse_list("x").is_none());
        assert!(CpuSet::parse_list("0-99999").is_none());
    }

    #[test]
    fn masks_parse_and_print() {
        assert_eq!(CpuSet::parse_mask("f").unwrap(), CpuSet::of(0..4));
        assert_eq!(
            CpuSet::parse_mask("00000001,00000002").unwrap(),
            CpuSet::of([1, 32])
        );
        assert_eq!(CpuSet::of([1, 32]).to_mask(), "00000001,00000002");
        assert_eq!(CpuSet::of([0, 2]).to_mask(), "00000005");
        assert_eq!(CpuSet::default().to_mask(), "00000000");
        assert_eq!(CpuSet::parse_mask("0").unwrap(), CpuSet::default());
        assert!(CpuSet::parse_mask("g").is_none());
        assert!(CpuSet::parse_mask("").is_none());
    }
}
