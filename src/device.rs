//! Block device numbers (`major:minor`), the one identity the kernel gives a device node.

use std::fmt;
use std::str::FromStr;

/// A device number as the kernel writes it in `/sys/dev/block/<major>:<minor>` and mountinfo.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub const fn new(major: u32, minor: u32) -> Self {
        DevNum { major, minor }
    }

    /// From a `st_rdev` / `st_dev` value.
    pub fn from_raw(raw: u64) -> Self {
        DevNum { major: nix::sys::stat::major(raw) as u32, minor: nix::sys::stat::minor(raw) as u32 }
    }

    /// Major 0 is the kernel's "anonymous" block device, used by filesystems with no disk
    /// behind them (NFS, CephFS, tmpfs, overlay). Such a device never appears in
    /// `/sys/dev/block`, so its presence cannot be checked there.
    pub fn is_anonymous(self) -> bool {
        self.major == 0
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a device number of the form MAJOR:MINOR: {0:?}")]
pub struct BadDevNum(pub String);

impl FromStr for DevNum {
    type Err = BadDevNum;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadDevNum(s.to_string());
        let (major, minor) = s.split_once(':').ok_or_else(bad)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return Err(bad());
        }
        Ok(DevNum { major: major.parse().map_err(|_| bad())?, minor: minor.parse().map_err(|_| bad())? })
    }
}

impl serde::Serialize for DevNum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: DevNum = "7:12".parse().unwrap();
        assert_eq!(d, DevNum::new(7, 12));
        assert_eq!(d.to_string(), "7:12");
        for bad in ["", "7", "7:", ":1", "a:1", "7:1:2", "-1:2", "7: 1", "99999999999:1"] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn raw_round_trip() {
        let raw = nix::sys::stat::makedev(259, 70000);
        assert_eq!(DevNum::from_raw(raw), DevNum::new(259, 70000));
    }
}
