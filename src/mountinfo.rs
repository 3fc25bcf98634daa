//! Parser for `/proc/<pid>/mountinfo` (proc(5)). Pure: bytes in, mounts out.
//!
//! Only the fields the agent needs are kept: the device number of the mounted filesystem,
//! the path inside it that is mounted (root), and the mount point. Malformed lines are skipped and counted, never fatal:
//! the file comes from the kernel, but the parser is also fuzzed.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::device::DevNum;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `st_dev` of the filesystem mounted there (field 3).
    pub device: DevNum,
    /// The directory of that filesystem mounted there: `/` for a whole filesystem, a
    /// subdirectory for a bind mount (field 4, decoded).
    pub root: PathBuf,
    /// Where it is mounted, octal escapes (`\040` etc.) decoded (field 5).
    pub mount_point: PathBuf,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParsedMountinfo {
    /// In file order: a later mount on the same point is on top of an earlier one.
    pub mounts: Vec<Mount>,
    pub malformed_lines: usize,
}

pub fn parse(text: &[u8]) -> ParsedMountinfo {
    let mut out = ParsedMountinfo::default();
    for line in text.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some(m) => out.mounts.push(m),
            None => out.malformed_lines += 1,
        }
    }
    out
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &[u8]) -> Option<Mount> {
    let mut fields = line.split(|&b| b == b' ');
    let _mount_id = fields.next().filter(|f| is_number(f))?;
    let _parent_id = fields.next().filter(|f| is_number(f))?;
    let device: DevNum = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let root = unescape(fields.next()?)?;
    let mount_point = unescape(fields.next()?)?;
    // The separator "-" must follow the optional fields; a line without it is cut short.
    if !fields.any(|f| f == b"-") {
        return None;
    }
    if !mount_point.starts_with(b"/") || !root.starts_with(b"/") {
        return None;
    }
    Some(Mount {
        device,
        root: PathBuf::from(OsString::from_vec(root)),
        mount_point: PathBuf::from(OsString::from_vec(mount_point)),
    })
}

/// Where `path` lives, as (filesystem device, path inside that filesystem): through the
/// mount whose mount point is the longest ancestor of `path`, the last one in file order
/// when several are stacked on one point. Two mount namespaces name the same directory
/// when both give the same answer. `None`: no mount covers `path` (not absolute).
pub fn resolve(mounts: &[Mount], path: &Path) -> Option<(DevNum, PathBuf)> {
    let mut best: Option<(&Mount, usize)> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) {
            let depth = m.mount_point.components().count();
            if best.is_none_or(|(_, d)| depth >= d) {
                best = Some((m, depth));
            }
        }
    }
    let (m, _) = best?;
    let rest = path.strip_prefix(&m.mount_point).ok()?;
    Some((m.device, if rest.as_os_str().is_empty() { m.root.clone() } else { m.root.join(rest) }))
}

fn is_number(f: &[u8]) -> bool {
    !f.is_empty() && f.iter().all(u8::is_ascii_digit)
}

/// The kernel escapes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape(field: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            let oct = field.get(i + 1..i + 4)?;
            if !oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                return None;
            }
            let v = oct.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(v).ok()?);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_lines() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
36 35 7:3 /disk.img /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/hotplug-disks/my\\040vol.img rw - ext4 /dev/loop3 rw\n\
37 35 8:1 / /no-optional rw - ext4 /dev/sda1 rw\n";
        let parsed = parse(text);
        assert_eq!(parsed.malformed_lines, 0);
        assert_eq!(parsed.mounts.len(), 3);
        assert_eq!(parsed.mounts[1].device, DevNum::new(7, 3));
        assert_eq!(parsed.mounts[1].root, PathBuf::from("/disk.img"));
        assert_eq!(
            parsed.mounts[1].mount_point,
            PathBuf::from("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/hotplug-disks/my vol.img")
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b"x 1 7:3 / /a rw - ext4 s rw"[..],
            b"1 1 7:3 / /a rw ext4 s rw",
            b"1 1 73 / /a rw - ext4 s rw",
            b"1 1 7:3 / /a\\09 rw - ext4 s rw",
            b"1 1 7:3 / /a\\777 rw - ext4 s rw",
            b"1 1 7:3 / relative rw - x y z",
            b"1 1 7:3",
        ] {
            let parsed = parse(bad);
            assert_eq!(parsed.mounts, vec![], "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(parsed.malformed_lines, 1);
        }
    }

    #[test]
    fn resolves_a_path_through_the_mount_on_top() {
        // The host: / on 8:1, /var/lib/kubelet its own filesystem on 8:2.
        let host = parse(b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / /var/lib/kubelet rw - ext4 /dev/sda2 rw\n3 2 0:50 / /var/lib/kubelet/pods/u/volumes/x rw - tmpfs tmpfs rw\n");
        // A container: the kubelet's pods directory bind-mounted at /host/...
        let pod = parse(b"10 9 0:60 / / rw - overlay overlay rw\n11 10 8:2 /pods /host/var/lib/kubelet/pods ro - ext4 /dev/sda2 rw\n");
        let on_host = resolve(&host.mounts, Path::new("/var/lib/kubelet/pods")).unwrap();
        assert_eq!(on_host, (DevNum::new(8, 2), PathBuf::from("/pods")));
        assert_eq!(resolve(&pod.mounts, Path::new("/host/var/lib/kubelet/pods")), Some(on_host.clone()));
        // A kubelet root the host keeps elsewhere resolves to another place.
        assert_ne!(resolve(&host.mounts, Path::new("/var/lib/k0s/kubelet/pods")), Some(on_host));
        // Stacked mounts: the later one wins.
        let stacked =
            parse(b"1 0 8:1 / / rw - ext4 a rw\n2 1 8:3 / /m rw - ext4 b rw\n3 1 8:4 /sub /m rw - ext4 c rw\n");
        assert_eq!(resolve(&stacked.mounts, Path::new("/m/x")), Some((DevNum::new(8, 4), PathBuf::from("/sub/x"))));
    }

    proptest! {
        // Fuzz-style: arbitrary bytes never panic, and every line is either a mount or counted.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let parsed = parse(&data);
            let lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
            prop_assert_eq!(parsed.mounts.len() + parsed.malformed_lines, lines);
        }

        // Escaping a path the kernel's way and parsing it back gives the path again.
        #[test]
        fn escaped_paths_round_trip(name in proptest::collection::vec(any::<u8>().prop_filter("no NUL or slash", |b| *b != 0 && *b != b'/'), 1..40)) {
            let mut path = b"/k/".to_vec();
            path.extend_from_slice(&name);
            let mut escaped = Vec::new();
            for &b in &path {
                if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
                    escaped.extend_from_slice(format!("\\{b:03o}").as_bytes());
                } else {
                    escaped.push(b);
                }
            }
            let mut line = b"1 2 7:9 / ".to_vec();
            line.extend_from_slice(&escaped);
            line.extend_from_slice(b" rw - ext4 /dev/loop9 rw\n");
            let parsed = parse(&line);
            prop_assert_eq!(parsed.mounts.len(), 1);
            prop_assert_eq!(parsed.mounts[0].mount_point.as_os_str().as_encoded_bytes(), &path[..]);
        }
    }
}
