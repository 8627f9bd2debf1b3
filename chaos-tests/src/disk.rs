//! # Size-limited data filesystems, and filling them
//!
//! A full disk is a fault a node meets for real: a write or an fsync of the Raft log, the
//! state machine or the audit trail returns `ENOSPC`. To make one on purpose without
//! filling the machine, each node's data directory gets a small filesystem of its own,
//! and the fault writes a ballast file into it until the filesystem refuses; healing
//! deletes the ballast.
//!
//! [`LimitedFs::mount`] prefers an ext4 image, loop-mounted (a real block filesystem with
//! real `fsync`, made with no blocks reserved for root, since the nodes may run as root);
//! where loop devices are unavailable it falls back to a `tmpfs` with a size limit (whose
//! `fsync` does nothing, but whose `ENOSPC` is as real). Both need the privilege to mount
//! (root, or `CAP_SYS_ADMIN`): without it an experiment with a disk fault cannot start
//! and says so.
//!
//! The filesystem is unmounted (lazily, so a process still holding a file does not keep
//! it) and its image deleted when the [`LimitedFs`] is dropped: what the node wrote
//! there is gone with it; its log is kept, since it lives outside the data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ballast file's name in the filesystem's root.
pub const BALLAST: &str = "chaos-disk-ballast";

/// A small filesystem mounted on a node's data directory.
#[derive(Debug)]
pub struct LimitedFs {
    mountpoint: PathBuf,
    image: Option<PathBuf>,
    bytes: u64,
}

impl LimitedFs {
    /// Mounts a filesystem of `bytes` on `mountpoint` (created if missing; it must be
    /// empty, since the mount hides what it holds), keeping an ext4 image at `image`.
    pub fn mount(mountpoint: &Path, image: &Path, bytes: u64) -> Result<LimitedFs, String> {
        fs::create_dir_all(mountpoint)
            .map_err(|e| format!("creating {}: {e}", mountpoint.display()))?;
        let not_empty = fs::read_dir(mountpoint)
            .map_err(|e| format!("reading {}: {e}", mountpoint.display()))?
            .next()
            .is_some();
        if not_empty {
            return Err(format!(
                "{} is not empty: a size-limited filesystem would hide its data",
                mountpoint.display()
            ));
        }
        let ext4 = mount_ext4(mountpoint, image, bytes);
        match ext4 {
            Ok(()) => Ok(LimitedFs {
                mountpoint: mountpoint.to_path_buf(),
                image: Some(image.to_path_buf()),
                bytes,
            }),
            Err(ext4_error) => {
                let _ = fs::remove_file(image);
                let size = format!("size={bytes}");
                run(Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
                    .arg(mountpoint))
                .map_err(|tmpfs_error| {
                    format!(
                        "a disk fault needs a size-limited filesystem on {} (mounting needs root \
                         or CAP_SYS_ADMIN): ext4 on a loop device failed ({ext4_error}); \
                         tmpfs failed ({tmpfs_error})",
                        mountpoint.display()
                    )
                })?;
                Ok(LimitedFs {
                    mountpoint: mountpoint.to_path_buf(),
                    image: None,
                    bytes,
                })
            }
        }
    }

    /// Its size in bytes, as asked for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the ballast until the filesystem refuses with `ENOSPC`; returns how many
    /// bytes the ballast holds. Any other error is returned (and the ballast removed).
    pub fn fill(&self) -> Result<u64, String> {
        let path = self.mountpoint.join(BALLAST);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let result = fill_file(&mut file);
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result.map_err(|e| format!("filling {}: {e}", path.display()))
    }

    /// Deletes the ballast (nothing to do if there is none).
    pub fn unfill(&self) -> Result<(), String> {
        let path = self.mountpoint.join(BALLAST);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("deleting {}: {e}", path.display())),
        }
    }
}

impl Drop for LimitedFs {
    fn drop(&mut self) {
        let umounted = run(Command::new("umount").arg("-l").arg(&self.mountpoint));
        if let Err(e) = umounted {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "umount failed");
        }
        if let Some(image) = &self.image {
            let _ = fs::remove_file(image);
        }
    }
}

/// Writes zeros to `file` in shrinking chunks until the filesystem is full, then makes
/// them durable; `ENOSPC` ends the filling, any other error is returned.
fn fill_file(file: &mut File) -> std::io::Result<u64> {
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut size = chunk.len();
    while size >= 512 {
        match file.write(&chunk[..size]) {
            Ok(0) => size /= 2,
            Ok(n) => written += n as u64,
            Err(e) if is_enospc(&e) => size /= 2,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match file.sync_all() {
        Ok(()) => Ok(written),
        // The last blocks may only be found missing at write-back.
        Err(e) if is_enospc(&e) => Ok(written),
        Err(e) => Err(e),
    }
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ENOSPC) || e.kind() == ErrorKind::StorageFull
}

/// Makes an ext4 image of `bytes` with no reserved blocks and loop-mounts it.
fn mount_ext4(mountpoint: &Path, image: &Path, bytes: u64) -> Result<(), String> {
    let file = File::create(image).map_err(|e| format!("creating {}: {e}", image.display()))?;
    file.set_len(bytes)
        .map_err(|e| format!("sizing {}: {e}", image.display()))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(image))?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(image)
        .arg(mountpoint))?;
    // The fresh filesystem's lost+found would make the node see a non-empty data
    // directory; nothing needs it on a scratch filesystem.
    let _ = fs::remove_dir(mountpoint.join("lost+found"));
    Ok(())
}

/// Runs a command; its stderr is the error if it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let program = format!("{:?}", command.get_program());
    let out = command
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filling a real size-limited filesystem leaves no space, and unfilling gives it
    /// back; skipped (with a note) where this process may not mount.
    #[test]
    fn filling_leaves_no_room_and_unfilling_gives_it_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs = match LimitedFs::mount(
            &dir.path().join("data"),
            &dir.path().join("data.img"),
            16 << 20,
        ) {
            Ok(fs) => fs,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let ballast = fs.fill().expect("fill");
        assert!(ballast > 8 << 20, "ballast of only {ballast} bytes");
        let probe = dir.path().join("data").join("probe");
        let err = fs::write(&probe, vec![1u8; 64 << 10])
            .and_then(|()| File::open(&probe)?.sync_all())
            .expect_err("a full filesystem refuses more data");
        assert!(is_enospc(&err), "{err}");
        fs.unfill().expect("unfill");
        fs::write(&probe, vec![1u8; 64 << 10]).expect("room again");
        drop(fs);
        assert!(!dir.path().join("data").join("probe").exists());
    }
}
