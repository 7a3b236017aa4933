//! A writer of empty qcow2 overlays: what `qemu-img create -f qcow2 -b <backing> -F <fmt> <file>
//! <size>` makes, written directly so a linked-clone root volume costs no `qemu-img` process.
//!
//! The format is QEMU's qcow2 version 3 (docs/interop/qcow2.txt in the QEMU tree). All numbers
//! are big-endian. The file is a run of clusters (64 KiB here); an empty overlay is only
//! metadata, laid out as:
//!
//! ```text
//! cluster 0                    header (104 bytes), header extensions (the backing file's
//!                              format), end-of-extensions marker, then the backing file name
//! clusters 1 ..                refcount table: one 8-byte entry per refcount block
//! then                         refcount blocks: one 16-bit refcount per cluster of the file
//! then                         L1 table: one 8-byte entry per L2 table, all zero (no L2 table,
//!                              so no guest cluster is allocated: every read goes to the backing
//!                              file, beyond its end reads zeros)
//! ```
//!
//! Every metadata cluster (header, refcount table, refcount blocks, L1 table) has refcount 1 and
//! nothing else is allocated, so `qemu-img check` finds no errors and no leaks. The L1 table is
//! all zeros and left as a hole of the file (it is sized by setting the file's length): a
//! multi-TiB volume costs a few KiB on disk, as with `qemu-img create`.
//!
//! Not written: the feature name table extension (optional), lazy refcounts, compression type
//! (header_length 104: zlib, the default), snapshots, bitmaps, encryption, external data files.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// "QFI\xfb".
const MAGIC: u32 = 0x5146_49fb;
const VERSION: u32 = 3;
/// Length of the version 3 header without optional fields (no compression_type field).
const HEADER_LENGTH: usize = 104;
/// 16-bit refcounts (`refcount_bits = 1 << 4`), QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU refuses a backing file name longer than this.
const MAX_BACKING_NAME: usize = 1023;
/// QEMU's implementation limit on the L1 table (bytes).
const MAX_L1_BYTES: u64 = 32 << 20;
/// 64 KiB, QEMU's default cluster size.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;

/// What to write: an empty overlay of `virtual_size` bytes on `backing_file` (a path as QEMU
/// will open it, stored as given) of format `backing_format` (e.g. "qcow2").
#[derive(Debug, Clone)]
pub struct Overlay<'a> {
    pub virtual_size: u64,
    pub backing_file: &'a str,
    pub backing_format: &'a str,
    /// log2 of the cluster size, 9 (512 B) ..= 21 (2 MiB); [`DEFAULT_CLUSTER_BITS`] normally.
    pub cluster_bits: u32,
}

/// Where the metadata goes (all offsets in bytes, cluster-aligned; counts in clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub cluster_size: u64,
    /// The virtual size written to the header: the asked size rounded up to 512-byte sectors,
    /// as `qemu-img create` does.
    pub virtual_size: u64,
    pub l1_entries: u64,
    pub l1_offset: u64,
    pub l1_clusters: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u64,
    pub refcount_blocks_offset: u64,
    pub refcount_blocks: u64,
    /// Clusters of the file, all metadata: header + refcount table + refcount blocks + L1.
    pub total_clusters: u64,
}

impl Overlay<'_> {
    /// The metadata layout, or why such an overlay cannot be written.
    pub fn layout(&self) -> Result<Layout, String> {
        if !(9..=21).contains(&self.cluster_bits) {
            return Err(format!("cluster_bits {} is not in 9..=21", self.cluster_bits));
        }
        let cs = 1u64 << self.cluster_bits;
        let virtual_size = self
            .virtual_size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .filter(|s| *s > 0 && *s <= i64::MAX as u64)
            .ok_or_else(|| format!("unusable virtual size {}", self.virtual_size))?;
        // An L2 table is one cluster of 8-byte entries, each mapping one guest cluster.
        let l2_covers = (cs / 8) * cs;
        let l1_entries = virtual_size.div_ceil(l2_covers);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(format!("virtual size {virtual_size} needs an L1 table over QEMU's 32 MiB limit"));
        }
        let l1_clusters = (l1_entries * 8).div_ceil(cs);
        // A refcount block is one cluster of 16-bit refcounts; the refcount table one 8-byte
        // entry per block. They count themselves too: grow both until they cover the file.
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = 1 + rt + rb + l1_clusters;
            let need_rb = total.div_ceil(per_block);
            let need_rt = (need_rb * 8).div_ceil(cs);
            if (need_rb, need_rt) == (rb, rt) {
                break;
            }
            (rb, rt) = (need_rb.max(rb), need_rt.max(rt));
        }
        let refcount_table_offset = cs;
        let refcount_blocks_offset = (1 + rt) * cs;
        let l1_offset = (1 + rt + rb) * cs;
        Ok(Layout {
            cluster_size: cs,
            virtual_size,
            l1_entries,
            l1_offset,
            l1_clusters,
            refcount_table_offset,
            refcount_table_clusters: rt,
            refcount_blocks_offset,
            refcount_blocks: rb,
            total_clusters: 1 + rt + rb + l1_clusters,
        })
    }

    /// The bytes of cluster 0 up to the end of the backing file name (the rest is zeros).
    fn header(&self, l: &Layout) -> Result<Vec<u8>, String> {
        let name = self.backing_file.as_bytes();
        let fmt = self.backing_format.as_bytes();
        if name.is_empty() || name.len() > MAX_BACKING_NAME {
            return Err(format!("backing file name of {} bytes (1..={MAX_BACKING_NAME})", name.len()));
        }
        if fmt.is_empty() || fmt.len() > 16 {
            return Err(format!("unusable backing format {:?}", self.backing_format));
        }
        let mut h = Vec::with_capacity(HEADER_LENGTH + 32 + name.len());
        let u32be = |h: &mut Vec<u8>, v: u32| h.extend_from_slice(&v.to_be_bytes());
        let u64be = |h: &mut Vec<u8>, v: u64| h.extend_from_slice(&v.to_be_bytes());
        u32be(&mut h, MAGIC);
        u32be(&mut h, VERSION);
        let backing_offset_at = h.len();
        u64be(&mut h, 0); // backing_file_offset, set below
        u32be(&mut h, name.len() as u32);
        u32be(&mut h, self.cluster_bits);
        u64be(&mut h, l.virtual_size);
        u32be(&mut h, 0); // crypt_method: none
        u32be(&mut h, l.l1_entries as u32);
        u64be(&mut h, l.l1_offset);
        u64be(&mut h, l.refcount_table_offset);
        u32be(&mut h, l.refcount_table_clusters as u32);
        u32be(&mut h, 0); // nb_snapshots
        u64be(&mut h, 0); // snapshots_offset
        u64be(&mut h, 0); // incompatible_features: none (clean, zlib, standard L2 entries)
        u64be(&mut h, 0); // compatible_features: no lazy refcounts
        u64be(&mut h, 0); // autoclear_features
        u32be(&mut h, REFCOUNT_ORDER);
        u32be(&mut h, HEADER_LENGTH as u32);
        debug_assert_eq!(h.len(), HEADER_LENGTH);
        // Backing file format: a string extension, padded to a multiple of 8.
        u32be(&mut h, EXT_BACKING_FORMAT);
        u32be(&mut h, fmt.len() as u32);
        h.extend_from_slice(fmt);
        h.resize(h.len().next_multiple_of(8), 0);
        u32be(&mut h, EXT_END);
        u32be(&mut h, 0);
        // The backing file name follows the extensions, in the first cluster.
        let at = h.len() as u64;
        h.extend_from_slice(name);
        if h.len() as u64 > l.cluster_size {
            return Err(format!("the header and backing file name do not fit in a {} byte cluster", l.cluster_size));
        }
        h[backing_offset_at..backing_offset_at + 8].copy_from_slice(&at.to_be_bytes());
        Ok(h)
    }

    /// Write the overlay to a new file at `path` (refused if it exists), flushed to disk (as
    /// `qemu-img create` does) before returning. On an error the partial file is left for the
    /// caller to remove.
    pub fn write(&self, path: &Path) -> Result<Layout, String> {
        let l = self.layout()?;
        let header = self.header(&l)?;
        let err = |what: &str, e: std::io::Error| format!("cannot write qcow2 {what} of {}: {e}", path.display());
        let mut refcount_table = Vec::with_capacity(l.refcount_blocks as usize * 8);
        for i in 0..l.refcount_blocks {
            refcount_table.extend_from_slice(&(l.refcount_blocks_offset + i * l.cluster_size).to_be_bytes());
        }
        // Refcount blocks are contiguous and each is exactly one cluster of 16-bit entries, so
        // cluster n's refcount is at byte 2n from the first block: one run of 1s.
        let refcounts = 1u16.to_be_bytes().repeat(l.total_clusters as usize);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(&header).map_err(|e| err("header", e))?;
        f.write_all_at(&refcount_table, l.refcount_table_offset).map_err(|e| err("refcount table", e))?;
        f.write_all_at(&refcounts, l.refcount_blocks_offset).map_err(|e| err("refcount blocks", e))?;
        // The L1 table: zeros, as a hole up to the end of its last cluster.
        f.set_len(l.total_clusters * l.cluster_size).map_err(|e| err("L1 table", e))?;
        f.sync_data().map_err(|e| err("file", e))?;
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    fn overlay(size: u64, bits: u32) -> Overlay<'static> {
        Overlay { virtual_size: size, backing_file: "/x/base.qcow2", backing_format: "qcow2", cluster_bits: bits }
    }

    #[test]
    fn layout_of_small_and_large_overlays() {
        // 2 GiB: 4 L1 entries in one cluster, one refcount table and block.
        let l = overlay(2 * GIB, 16).layout().unwrap();
        assert_eq!((l.l1_entries, l.l1_clusters, l.refcount_table_clusters, l.refcount_blocks), (4, 1, 1, 1));
        assert_eq!((l.refcount_table_offset, l.refcount_blocks_offset, l.l1_offset), (65536, 2 * 65536, 3 * 65536));
        assert_eq!(l.total_clusters, 4);
        // Rounded up to whole sectors, one L2 more for the tail.
        let l = overlay(GIB / 2 + 1, 16).layout().unwrap();
        assert_eq!((l.virtual_size, l.l1_entries), (GIB / 2 + 512, 2));
        // 10 TiB: 20480 L1 entries = 3 clusters.
        let l = overlay(10 * TIB, 16).layout().unwrap();
        assert_eq!((l.l1_entries, l.l1_clusters), (20480, 3));
        // 512-byte clusters, 64 GiB: 2 Mi L1 entries = 32768 clusters, 256 refcounts a block,
        // 64 blocks a table cluster.
        let l = overlay(64 * GIB, 9).layout().unwrap();
        assert_eq!((l.l1_entries, l.l1_clusters), (2 << 20, 32768));
        assert_eq!((l.refcount_blocks, l.refcount_table_clusters), (129, 3));
        assert!(l.refcount_blocks * 256 >= l.total_clusters);
        assert!(l.refcount_table_clusters * 64 >= l.refcount_blocks);
        // Over QEMU's L1 limit, and nonsense.
        assert!(overlay(256 * GIB, 9).layout().is_err());
        assert!(overlay(0, 16).layout().is_err());
        assert!(overlay(u64::MAX, 16).layout().is_err());
        assert!(overlay(GIB, 8).layout().is_err());
    }

    #[test]
    fn header_fields() {
        let o = overlay(3 * GIB, 16);
        let l = o.layout().unwrap();
        let h = o.header(&l).unwrap();
        let be32 = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| u64::from_be_bytes(h[at..at + 8].try_into().unwrap());
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!((be32(4), be32(20), be64(24), be32(36)), (3, 16, 3 * GIB, 6));
        assert_eq!((be64(40), be64(48), be32(56), be32(96), be32(100)), (3 * 65536, 65536, 1, 4, 104));
        assert_eq!((be32(104), be32(108), &h[112..117]), (0xe279_2aca, 5, &b"qcow2"[..]));
        assert_eq!((be32(120), be32(124)), (0, 0));
        assert_eq!((be64(8), be32(16) as usize), (128, "/x/base.qcow2".len()));
        assert_eq!(&h[128..], b"/x/base.qcow2");
        // A name that cannot fit is refused.
        let long = "/".repeat(1024);
        let o = Overlay { backing_file: &long, ..overlay(GIB, 16) };
        assert!(o.header(&l).is_err());
        let o = Overlay { backing_file: &long[..1000], ..overlay(GIB, 9) };
        assert!(o.header(&o.layout().unwrap()).is_err());
    }

    fn have_qemu_img() -> bool {
        Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    fn run(prog: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new(prog).args(args).output().expect("runs");
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// The written overlay is one `qemu-img` accepts as its own: no check errors or leaks, the
    /// info it reports, the backing file's content.
    fn check_overlay(dir: &Path, base: &str, base_size: u64, size: u64, bits: u32) {
        let path = dir.join(format!("overlay-{size}-{bits}.qcow2"));
        let o = Overlay { virtual_size: size, backing_file: base, backing_format: "qcow2", cluster_bits: bits };
        let l = o.write(&path).unwrap();
        let p = path.to_str().unwrap();
        let (ok, out) = run("qemu-img", &["check", p]);
        assert!(ok && out.contains("No errors were found"), "check of {size}/{bits}: {out}");
        assert!(!out.contains("leak"), "{out}");
        let (ok, out) = run("qemu-img", &["info", "--output=json", p]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["format"], "qcow2", "{v}");
        assert_eq!(v["virtual-size"].as_u64(), Some(size.div_ceil(512) * 512), "{v}");
        assert_eq!(v["backing-filename"], base, "{v}");
        assert_eq!(v["backing-filename-format"], "qcow2", "{v}");
        assert_eq!(v["cluster-size"].as_u64(), Some(1 << bits), "{v}");
        assert_eq!(v["format-specific"]["data"]["compat"], "1.1", "{v}");
        assert_eq!(v["format-specific"]["data"]["refcount-bits"], 16, "{v}");
        assert_eq!(v["dirty-flag"], false, "{v}");
        // A sparse file: the header, refcounts and (zero) L1 table only.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), l.total_clusters << bits);
        // The guest sees the backing file's content, zeros beyond it.
        let (ok, out) = run("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", p, base]);
        assert!(ok && out.contains("Images are identical"), "compare {size}/{bits}: {out}");
        // Writing to it works and keeps it consistent; the write shows, the backing is unchanged.
        let at = (size / 2 / 512 * 512).to_string();
        let (ok, out) = run("qemu-io", &["-f", "qcow2", "-c", &format!("write -P 0x5a {at} 4k"), p]);
        assert!(ok, "{out}");
        let (ok, out) = run("qemu-img", &["check", p]);
        assert!(ok && out.contains("No errors were found"), "check after a write {size}/{bits}: {out}");
        let (ok, out) = run("qemu-io", &["-f", "qcow2", "-c", &format!("read -P 0x5a {at} 4k"), p]);
        assert!(ok && !out.contains("Pattern verification failed"), "{out}");
        let (ok, _) = run("qemu-img", &["compare", "-f", "qcow2", "-F", "qcow2", p, base]);
        assert!(!ok, "the overlay differs from its backing file after the write");
        assert!(base_size > 0);
    }

    #[test]
    fn qemu_img_accepts_the_overlays() {
        if !have_qemu_img() {
            eprintln!("SKIP qemu_img_accepts_the_overlays: qemu-img is not installed (apt-get install qemu-utils)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        let b = base.to_str().unwrap();
        let base_size = 64u64 << 20;
        assert!(run("qemu-img", &["create", "-q", "-f", "qcow2", b, &base_size.to_string()]).0);
        // Data at the start, the middle and the last cluster of the image.
        for (pat, at) in [(1, 0), (2, 32 << 20), (3, (64 << 20) - 65536)] {
            let (ok, out) = run("qemu-io", &["-f", "qcow2", "-c", &format!("write -P {pat} {at} 64k"), b]);
            assert!(ok, "{out}");
        }
        for size in [
            base_size,                    // the image's size
            20 * GIB,                     // bigger
            base_size + 3 * 65536 + 1536, // not a multiple of the cluster (but of 512)
            base_size + 1000,             // not a multiple of 512: rounded up
            10 * TIB,                     // several L1 clusters
        ] {
            check_overlay(d.path(), b, base_size, size, DEFAULT_CLUSTER_BITS);
        }
        // 512-byte clusters: several refcount blocks (1 GiB), several refcount table clusters
        // (64 GiB) — the paths 64 KiB clusters only take with petabyte volumes.
        check_overlay(d.path(), b, base_size, GIB, 9);
        check_overlay(d.path(), b, base_size, 64 * GIB, 9);
        // An existing file is not overwritten.
        let again = Overlay { virtual_size: base_size, backing_file: b, backing_format: "qcow2", cluster_bits: 16 };
        assert!(again.write(&d.path().join(format!("overlay-{base_size}-16.qcow2"))).is_err());
    }
}
