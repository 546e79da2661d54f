//! A real small file system for tests: a size-limited tmpfs mounted on a temporary directory,
//! which a test fills or remounts read-only. Mounting needs root; under `CI=true` a test that
//! cannot mount fails (CI runs as root), elsewhere it is skipped with the reason.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily) on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `8m`). `None` when this machine
    /// cannot (not root, no mount): the test is skipped, except under `CI=true`, where it fails.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mkdir");
        let p = path.to_str().expect("utf-8 path");
        match run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            p,
        ]) {
            Ok(()) => Some(Tmpfs { dir, path }),
            Err(why) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot mount a tmpfs ({why}); CI runs as root and must run this test"
                );
                eprintln!("skipped: cannot mount a tmpfs ({why}); run as root to run this test");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remounts it read-only (`ro`) or read-write.
    pub fn remount(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        run(&["mount", "-o", mode, self.path.to_str().unwrap()]).unwrap();
    }

    /// Fills it: writes `filler` until the file system refuses (ENOSPC). Returns the file.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        // Smaller writes take the last pages.
        loop {
            match file.write(&[0u8; 512]) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path.to_str().unwrap_or_default().to_string();
        let _ = run(&["umount", "-l", &p]);
        let _ = &self.dir;
    }
}

/// An ext4 file system on a loop-mounted image file, mounted with `errors=remount-ro`: what a
/// node's journal disk does when the kernel finds an error (it remounts it read-only under the
/// running daemon, open files and all).
pub struct Ext4Image {
    dir: tempfile::TempDir,
    image: PathBuf,
    path: PathBuf,
}

impl Ext4Image {
    /// Makes and mounts an image of `size_mb`. `None` when this machine cannot (not root, no
    /// loop device, no mkfs.ext4): skipped, except under `CI=true`, where it fails.
    pub fn mount(size_mb: u64) -> Option<Ext4Image> {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mkdir");
        let made = std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_mb * 1024 * 1024))
            .map_err(|e| e.to_string())
            .and_then(|()| run(&["mkfs.ext4", "-q", "-F", image.to_str().unwrap()]));
        let mounted = made.and_then(|()| Self::mount_at(&image, &path));
        match mounted {
            Ok(()) => Some(Ext4Image { dir, image, path }),
            Err(why) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot mount an ext4 image ({why}); CI runs as root and must run this test"
                );
                eprintln!(
                    "skipped: cannot mount an ext4 image ({why}); run as root to run this test"
                );
                None
            }
        }
    }

    fn mount_at(image: &Path, path: &Path) -> Result<(), String> {
        run(&[
            "mount",
            "-o",
            "loop,errors=remount-ro",
            image.to_str().unwrap(),
            path.to_str().unwrap(),
        ])
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the kernel find an error: ext4 remounts the file system read-only at once (every
    /// write then fails with `EROFS`), as it does on a real disk error.
    pub fn fail(&self) {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", self.path.to_str().unwrap()])
            .output()
            .expect("findmnt");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = device.rsplit('/').next().unwrap_or_default().to_string();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")
            .unwrap_or_else(|e| panic!("triggering an ext4 error on {device}: {e}"));
    }

    /// What an operator does after such an error: detaches the read-only mount (lazily: the
    /// daemon still holds files on it) and mounts the file system again, writable, through a
    /// new loop device (the old one, still held, keeps its read-only state).
    pub fn remount_writable(&self) {
        run(&["umount", "-l", self.path.to_str().unwrap()]).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", self.image.to_str().unwrap()])
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        run(&[
            "mount",
            "-o",
            "errors=remount-ro",
            &device,
            self.path.to_str().unwrap(),
        ])
        .unwrap();
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        let _ = run(&["umount", "-l", self.path.to_str().unwrap_or_default()]);
        // Loop devices left attached to the image (lazily unmounted ones detach themselves
        // once their last file is closed; `-d` marks them for that).
        if let Ok(out) = Command::new("losetup")
            .args(["-j", self.image.to_str().unwrap_or_default()])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(device) = line.split(':').next() {
                    let _ = run(&["losetup", "-d", device]);
                }
            }
        }
        let _ = &self.dir;
    }
}
