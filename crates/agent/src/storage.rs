//! Images and volumes: the per-host image cache and qcow2 volumes made with `qemu-img`, except
//! a thin volume on a backing file (a linked clone), whose overlay is written directly
//! ([`crate::qcow2`]).

use crate::qcow2;
use crate::sys::{self, KeyLocks};
use rzstack_api::agent::{
    Deleted, ImageCacheCmd, ImageCacheInfo, Provisioning, StorageCapacity, StorageCapacityCmd, VolumeCreateCmd,
    VolumeDeleteCmd, VolumeInfo, VolumeResizeCmd, VolumeRevertCmd, VolumeSnapshotCmd,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const QEMU_IMG: &str = "qemu-img";

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImgInfo {
    pub format: String,
    pub virtual_size: i64,
    pub backing_file: Option<String>,
}

/// `qemu-img info`; `shared` (`-U`) reads an image a running QEMU holds.
pub async fn img_info(path: &Path, shared: bool) -> Result<ImgInfo, String> {
    let p = path.to_string_lossy().into_owned();
    let mut args = vec!["info", "--output=json"];
    if shared {
        args.push("-U");
    }
    args.push(&p);
    let out = sys::run(QEMU_IMG, &args).await?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("qemu-img info {p}: {e}"))?;
    Ok(ImgInfo {
        format: v["format"].as_str().unwrap_or_default().to_string(),
        virtual_size: v["virtual-size"].as_i64().unwrap_or(0),
        backing_file: v["full-backing-filename"].as_str().or(v["backing-filename"].as_str()).map(String::from),
    })
}

/// An empty qcow2 overlay at `tmp` (a new file) on `backing` of format `backing_format`:
/// written directly by [`qcow2::Overlay`] (no process to start), else, should that fail for
/// any reason (logged), made by `qemu-img create` as before.
async fn create_overlay(tmp: &Path, backing: &str, backing_format: &str, virtual_size: i64) -> Result<(), String> {
    let written = {
        let (tmp, backing, backing_format) = (tmp.to_path_buf(), backing.to_string(), backing_format.to_string());
        tokio::task::spawn_blocking(move || {
            qcow2::Overlay {
                virtual_size: virtual_size.max(0) as u64,
                backing_file: &backing,
                backing_format: &backing_format,
                cluster_bits: qcow2::DEFAULT_CLUSTER_BITS,
            }
            .write(&tmp)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the qcow2 writer failed: {e}")))
    };
    if let Err(e) = written {
        let path = tmp.display();
        tracing::warn!(%path, backing, error = %e, "qcow2 overlay not written directly, using qemu-img create");
        remove_if_exists(tmp)?;
        let (t, size) = (tmp.to_string_lossy().into_owned(), virtual_size.to_string());
        sys::run(QEMU_IMG, &["create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, &t, &size]).await?;
    }
    Ok(())
}

/// Bytes a file uses on disk.
pub fn actual_size(path: &Path) -> i64 {
    std::fs::metadata(path).map(|m| (m.blocks() * 512) as i64).unwrap_or(0)
}

fn tmp_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".creating");
    PathBuf::from(s)
}

fn remove_if_exists(p: &Path) -> Result<bool, String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove {}: {e}", p.display())),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| format!("cannot rename {} to {}: {e}", from.display(), to.display()))
}

fn lock_hint(e: String, path: &str) -> String {
    if e.contains("lock") {
        format!("{path} is in use by a running VM (stop it first): {e}")
    } else {
        e
    }
}

/// A file's identity for [`Storage::cached_info`]: (length, mtime ns, inode).
type Stamp = (u64, i64, u64);

fn file_stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino()))
}

pub struct Storage {
    pub data_dir: PathBuf,
    locks: KeyLocks,
    /// `qemu-img info` of images used read-only (image caches, backing files), by path, valid
    /// while the file's length, mtime and inode stay the same: a VM create reads them again
    /// without a `qemu-img` process.
    infos: std::sync::Mutex<std::collections::HashMap<PathBuf, (Stamp, ImgInfo)>>,
}

impl Storage {
    pub fn new(data_dir: PathBuf) -> Self {
        Storage { data_dir, locks: KeyLocks::default(), infos: Default::default() }
    }

    /// [`img_info`] (shared) of an image that is not written to, remembered while it is unchanged.
    async fn cached_info(&self, path: &Path) -> Result<ImgInfo, String> {
        let stamp = file_stamp(path);
        if let Some(s) = stamp {
            let map = self.infos.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((st, i)) = map.get(path) {
                if *st == s {
                    return Ok(i.clone());
                }
            }
        }
        let i = img_info(path, true).await?;
        if let Some(s) = stamp.filter(|s| file_stamp(path) == Some(*s)) {
            let mut map = self.infos.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 4096 {
                map.clear();
            }
            map.insert(path.to_path_buf(), (s, i.clone()));
        }
        Ok(i)
    }

    /// Fill the image cache once; concurrent calls for one image wait for the first.
    pub async fn cache_image(&self, cmd: &ImageCacheCmd) -> Result<ImageCacheInfo, String> {
        cmd.validate()?;
        let root = cmd.cache_root.as_ref().map(PathBuf::from).unwrap_or_else(|| self.data_dir.clone());
        let iso = cmd.format.as_deref() == Some("iso");
        let (kind, ext) = if iso { ("iso", "iso") } else { ("template", "qcow2") };
        let dir = root.join("imagecache").join(kind).join(&cmd.image_uuid);
        let dest = dir.join(format!("{}.{ext}", cmd.image_uuid));
        let _g = self.locks.lock(&dest.to_string_lossy()).await;
        if !dest.exists() {
            let src = Path::new(&cmd.source_path);
            if !src.is_file() {
                return Err(format!("the image file {} does not exist on this host", cmd.source_path));
            }
            sys::mkdirs(&dir)?;
            let tmp = tmp_of(&dest);
            remove_if_exists(&tmp)?;
            let filled = async {
                let (format, backed) = if iso {
                    ("iso".to_string(), false)
                } else {
                    let i = img_info(src, true).await?;
                    (i.format, i.backing_file.is_some())
                };
                match format.as_str() {
                    "qcow2" | "iso" if !backed => {
                        // Same filesystem: a hard link costs nothing; else a copy.
                        if std::fs::hard_link(src, &tmp).is_err() {
                            tokio::fs::copy(src, &tmp)
                                .await
                                .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), tmp.display()))?;
                        }
                    }
                    "qcow2" | "raw" => {
                        let (s, t) = (src.to_string_lossy().into_owned(), tmp.to_string_lossy().into_owned());
                        sys::run(QEMU_IMG, &["convert", "-U", "-f", &format, "-O", "qcow2", &s, &t]).await?;
                    }
                    other => {
                        return Err(format!("the image {} has format {other:?}, not qcow2 or raw", cmd.source_path))
                    }
                }
                rename(&tmp, &dest)
            }
            .await;
            if let Err(e) = filled {
                let _ = remove_if_exists(&tmp);
                return Err(e);
            }
        }
        let (format, size) = if iso {
            ("iso".to_string(), std::fs::metadata(&dest).map(|m| m.len() as i64).unwrap_or(0))
        } else {
            let i = self.cached_info(&dest).await?;
            (i.format, i.virtual_size)
        };
        Ok(ImageCacheInfo {
            install_path: dest.to_string_lossy().into_owned(),
            format,
            size,
            actual_size: actual_size(&dest),
        })
    }

    pub(crate) async fn volume_info(path: &Path) -> Result<VolumeInfo, String> {
        let i = img_info(path, true).await?;
        Ok(VolumeInfo {
            install_path: path.to_string_lossy().into_owned(),
            format: i.format,
            size: i.virtual_size,
            actual_size: actual_size(path),
            backing_file: i.backing_file,
        })
    }

    pub async fn create_volume(&self, cmd: &VolumeCreateCmd) -> Result<VolumeInfo, String> {
        cmd.validate()?;
        let dest = PathBuf::from(&cmd.install_path);
        let _g = self.locks.lock(&cmd.install_path).await;
        let thick = cmd.provisioning == Provisioning::ThickProvisioning;
        if dest.exists() {
            // A replay: answer the volume when it is the one asked for.
            let v = Self::volume_info(&dest).await?;
            let want_backing = if thick { None } else { cmd.backing_file.as_deref() };
            if v.backing_file.as_deref() == want_backing {
                return Ok(v);
            }
            return Err(format!("{} exists and is another volume", cmd.install_path));
        }
        if let Some(parent) = dest.parent() {
            sys::mkdirs(parent)?;
        }
        let tmp = tmp_of(&dest);
        remove_if_exists(&tmp)?;
        let t = tmp.to_string_lossy().into_owned();
        // What the new file is (qcow2, its virtual size, its backing file): known without
        // another `qemu-img info`.
        let result = async {
            match &cmd.backing_file {
                Some(b) => {
                    if !Path::new(b).is_file() {
                        return Err(format!("the backing file {b} does not exist on this host"));
                    }
                    let bi = self.cached_info(Path::new(b)).await?;
                    if cmd.size != 0 && cmd.size < bi.virtual_size {
                        return Err(format!(
                            "size {} is smaller than the image's virtual size {}",
                            cmd.size, bi.virtual_size
                        ));
                    }
                    let virtual_size = cmd.size.max(bi.virtual_size);
                    let size = virtual_size.to_string();
                    if thick {
                        sys::run(QEMU_IMG, &["convert", "-U", "-O", "qcow2", "-o", "preallocation=falloc", b, &t])
                            .await?;
                        if cmd.size > bi.virtual_size {
                            sys::run(QEMU_IMG, &["resize", "--preallocation=falloc", &t, &size]).await?;
                        }
                    } else {
                        create_overlay(&tmp, b, &bi.format, virtual_size).await?;
                    }
                    rename(&tmp, &dest)?;
                    Ok((virtual_size, (!thick).then(|| b.clone())))
                }
                None => {
                    let size = cmd.size.to_string();
                    let prealloc = if thick { "preallocation=falloc" } else { "preallocation=off" };
                    sys::run(QEMU_IMG, &["create", "-q", "-f", "qcow2", "-o", prealloc, &t, &size]).await?;
                    rename(&tmp, &dest)?;
                    Ok((cmd.size, None))
                }
            }
        }
        .await;
        match result {
            Ok((size, backing_file)) => Ok(VolumeInfo {
                install_path: dest.to_string_lossy().into_owned(),
                format: "qcow2".into(),
                // qemu-img rounds a size up to whole 512-byte sectors
                size: size.saturating_add(511) / 512 * 512,
                actual_size: actual_size(&dest),
                backing_file,
            }),
            Err(e) => {
                let _ = remove_if_exists(&tmp);
                Err(e)
            }
        }
    }

    pub async fn delete_volume(&self, cmd: &VolumeDeleteCmd) -> Result<Deleted, String> {
        cmd.validate()?;
        let path = PathBuf::from(&cmd.install_path);
        let _g = self.locks.lock(&cmd.install_path).await;
        if !path.exists() {
            return Ok(Deleted { deleted: false });
        }
        // Without -U, qemu-img fails on an image a running QEMU holds.
        img_info(&path, false).await.map_err(|e| lock_hint(e, &cmd.install_path))?;
        let deleted = remove_if_exists(&path)?;
        if let Some(parent) = path.parent() {
            // The volume's snapshots (`<dir>/snapshots/`) go with it.
            let snaps = parent.join("snapshots");
            if snaps.is_dir() {
                for e in std::fs::read_dir(&snaps).map_err(|e| format!("cannot read {}: {e}", snaps.display()))? {
                    let p = e.map_err(|e| format!("cannot read {}: {e}", snaps.display()))?.path();
                    if p.extension().is_some_and(|x| x == "qcow2") {
                        remove_if_exists(&p)?;
                    }
                }
                let _ = std::fs::remove_dir(&snaps); // only when empty
            }
            let _ = std::fs::remove_dir(parent); // only when empty
        }
        Ok(Deleted { deleted })
    }

    pub async fn snapshot_volume(&self, cmd: &VolumeSnapshotCmd) -> Result<VolumeInfo, String> {
        cmd.validate()?;
        let dest = PathBuf::from(&cmd.install_path);
        let _g = self.locks.lock(&cmd.install_path).await;
        if dest.exists() {
            return Self::volume_info(&dest).await;
        }
        let src = Path::new(&cmd.volume_install_path);
        if !src.is_file() {
            return Err(format!("the volume {} does not exist on this host", cmd.volume_install_path));
        }
        if let Some(parent) = dest.parent() {
            sys::mkdirs(parent)?;
        }
        let tmp = tmp_of(&dest);
        remove_if_exists(&tmp)?;
        let t = tmp.to_string_lossy().into_owned();
        // No -U: a volume a running QEMU writes to is refused instead of copied half-written.
        if let Err(e) = sys::run(QEMU_IMG, &["convert", "-O", "qcow2", &cmd.volume_install_path, &t]).await {
            let _ = remove_if_exists(&tmp);
            return Err(lock_hint(e, &cmd.volume_install_path));
        }
        rename(&tmp, &dest)?;
        Self::volume_info(&dest).await
    }

    /// Replace a volume file with a copy of a snapshot (`qemu-img convert` to a temporary file,
    /// then a rename over the volume).
    pub async fn revert_volume(&self, cmd: &VolumeRevertCmd) -> Result<VolumeInfo, String> {
        cmd.validate()?;
        let dest = PathBuf::from(&cmd.install_path);
        let _g = self.locks.lock(&cmd.install_path).await;
        if !Path::new(&cmd.snapshot_install_path).is_file() {
            return Err(format!("the snapshot {} does not exist on this host", cmd.snapshot_install_path));
        }
        if dest.exists() {
            // Without -U, qemu-img fails on an image a running QEMU holds.
            img_info(&dest, false).await.map_err(|e| lock_hint(e, &cmd.install_path))?;
        } else if let Some(parent) = dest.parent() {
            sys::mkdirs(parent)?;
        }
        let tmp = tmp_of(&dest);
        remove_if_exists(&tmp)?;
        let t = tmp.to_string_lossy().into_owned();
        if let Err(e) = sys::run(QEMU_IMG, &["convert", "-O", "qcow2", &cmd.snapshot_install_path, &t]).await {
            let _ = remove_if_exists(&tmp);
            return Err(e);
        }
        rename(&tmp, &dest)?;
        Self::volume_info(&dest).await
    }

    /// Grow a volume file with `qemu-img resize` (no -U: refused while a running QEMU holds it).
    pub async fn resize_volume(&self, cmd: &VolumeResizeCmd) -> Result<VolumeInfo, String> {
        cmd.validate()?;
        let path = PathBuf::from(&cmd.install_path);
        let _g = self.locks.lock(&cmd.install_path).await;
        if !path.is_file() {
            return Err(format!("the volume {} does not exist on this host", cmd.install_path));
        }
        let i = img_info(&path, false).await.map_err(|e| lock_hint(e, &cmd.install_path))?;
        if cmd.size < i.virtual_size {
            return Err(format!("cannot shrink {} from {} to {} bytes", cmd.install_path, i.virtual_size, cmd.size));
        }
        if cmd.size > i.virtual_size {
            let size = cmd.size.to_string();
            sys::run(QEMU_IMG, &["resize", "-q", "-f", &i.format, &cmd.install_path, &size])
                .await
                .map_err(|e| lock_hint(e, &cmd.install_path))?;
        }
        Self::volume_info(&path).await
    }

    /// `df` of the filesystem holding the path (made when missing).
    pub async fn capacity(&self, cmd: &StorageCapacityCmd) -> Result<StorageCapacity, String> {
        cmd.validate()?;
        sys::mkdirs(Path::new(&cmd.path))?;
        let out = sys::run("df", &["-B1", "--output=size,avail", cmd.path.as_str()]).await?;
        let nums: Vec<i64> =
            out.lines().nth(1).unwrap_or_default().split_whitespace().filter_map(|w| w.parse().ok()).collect();
        match nums[..] {
            [total, avail] => {
                Ok(StorageCapacity { path: cmd.path.clone(), total_capacity: total, available_capacity: avail })
            }
            _ => Err(format!("unreadable df output for {}: {out:?}", cmd.path)),
        }
    }
}
