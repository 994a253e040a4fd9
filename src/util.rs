//! Small process-level helpers.

/// Drop the pages lying wholly inside bytes [start, end) of a read-only file mapping from this
/// process's resident set: they stay in the page cache and are read again from the file if
/// touched. Used once data was copied elsewhere (repacked weights, converted tensors) so it is
/// not counted twice. Assumes 4 KiB pages; on a kernel with larger pages the advice is refused
/// (unaligned) and nothing happens, which is only a missed saving.
pub fn release_pages(map: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let first = start.div_ceil(PAGE) * PAGE;
    let last = end.min(map.len()) / PAGE * PAGE;
    if last > first {
        // SAFETY: a read-only private file mapping: MADV_DONTNEED only drops clean pages, which
        // are read again from the file if touched, so slices into them stay valid.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
        };
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size in bytes (Linux `VmRSS`), if known.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// Hand the allocator's free memory back to the system (glibc `malloc_trim`; elsewhere a no-op).
/// Called between the steps of long pipelines (`summarize`'s notes): glibc keeps freed blocks
/// in its heap, and blocks freed among long-lived ones (notes, chunks) are never returned, so
/// without this a long run's resident size creeps up with the number of steps.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim only releases free heap pages; it is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// CPU time (user + system, all threads) this process has used, in seconds, if known (Linux
/// `/proc/self/stat`, in units of USER_HZ = 100 on every Linux ABI). Unlike wall time it is not
/// stretched by other processes competing for the cores, so a long benchmark can run beside other
/// work; with one compute thread there is no spin-waiting in it either.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are numeric.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')' come field 3 (state) .. ; utime is field 14 and stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn proc_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A progress bar on stderr for `total` units of `unit` (hidden when stderr is not a terminal).
pub fn progress(total: u64, unit: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    let tmpl = format!("{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&tmpl) {
        pb.set_style(style);
    }
    pb
}

/// The `p` quantile (0..=1) of `v`, interpolated linearly between the sorted values (NaN for an
/// empty `v`).
pub fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let x = p.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x - x.floor());
    s[i] + f * (s[(i + 1).min(s.len() - 1)] - s[i])
}

/// FNV-1a, 64-bit: a small, dependency-free checksum for snapshots and fingerprints (not
/// cryptographic; it detects corruption, not tampering).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64::new()
    }
}

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64(0xcbf29ce484222325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_between_sorted_values() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
