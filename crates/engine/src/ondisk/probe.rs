//! What is already on a device: `create` refuses to overwrite anything it recognises, and
//! any non-zero byte, unless forced.

use super::format::SB_OFFSETS;

/// Bytes inspected at the start of a member.
pub const PROBE_LEN: usize = 1 << 20;

/// Describes what the first MiB of a device holds, or `None` when it is all zeros.
pub fn describe_content(head: &[u8]) -> Option<String> {
    signature(head).or_else(|| {
        head.iter()
            .position(|&b| b != 0)
            .map(|i| format!("non-zero data at byte {i}"))
    })
}

/// What the first MiB of a device holds when it is something known (a damocles superblock,
/// a filesystem, a partition table, ...), not merely non-zero bytes.
pub fn signature(head: &[u8]) -> Option<String> {
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    for off in SB_OFFSETS {
        if at(off as usize, &super::format::SB_MAGIC) {
            let uuid = head
                .get(off as usize + 16..off as usize + 32)
                .map(|u| {
                    uuid::Uuid::from_slice(u)
                        .map(|u| u.to_string())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            return Some(format!("a damocles superblock (array {uuid})"));
        }
    }
    let known: &[(usize, &[u8], &str)] = &[
        (1080, &[0x53, 0xEF], "an ext2/3/4 filesystem"),
        (0, b"XFSB", "an XFS filesystem"),
        (0x10040, b"_BHRfS_M", "a btrfs filesystem"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (512, b"EFI PART", "a GPT partition table"),
        (512, b"LABELONE", "an LVM physical volume"),
        (
            4096,
            &[0xfc, 0x4e, 0x2b, 0xa9],
            "an mdadm RAID member (v1.2)",
        ),
        (4086, b"SWAPSPACE2", "a swap area"),
        (3, b"NTFS    ", "an NTFS filesystem"),
        (0x8001, b"CD001", "an ISO 9660 image"),
    ];
    for (off, sig, what) in known {
        if at(*off, sig) {
            return Some(what.to_string());
        }
    }
    if at(510, &[0x55, 0xAA]) {
        return Some("an MBR partition table or boot sector".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_signatures() {
        let mut b = vec![0u8; PROBE_LEN];
        assert_eq!(describe_content(&b), None);
        b[1080] = 0x53;
        b[1081] = 0xEF;
        assert!(describe_content(&b).unwrap().contains("ext2/3/4"));
        let mut b = vec![0u8; PROBE_LEN];
        b[777] = 1;
        assert_eq!(describe_content(&b).unwrap(), "non-zero data at byte 777");
        // Short heads (tiny devices) are fine.
        assert_eq!(describe_content(&[0u8; 10]), None);
    }
}
