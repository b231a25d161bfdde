//! A target's filesystem as its process sees it (mirrord's `feature.fs`): every path is
//! resolved inside `/proc/PID/root` with `openat2(RESOLVE_IN_ROOT)`, so absolute symlinks
//! and `..` stay inside the container's root and its mounts (Secrets, ConfigMaps, volumes),
//! and nothing of the node can be named. Blocking calls: run them off the async threads.

use mirrord_protocol::files::{
    DirEntry, FileAnswer, FileFailure, FileRequest, FileStat, MAX_DIR_BYTES, MAX_DIR_ENTRIES,
    MAX_WRITE_CHUNK,
};
use rustix::fs::{Access, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Kernel filesystems never served (linux/magic.h): sysfs, cgroup (v1, v2), debugfs,
/// securityfs, tracefs, bpf (procfs is `rustix::fs::PROC_SUPER_MAGIC`).
const KERNEL_FS: [u64; 7] = [
    0x6265_6572, // SYSFS_MAGIC
    0x0027_e0eb, // CGROUP_SUPER_MAGIC
    0x6367_7270, // CGROUP2_SUPER_MAGIC
    0x6462_6720, // DEBUGFS_MAGIC
    0x7363_6673, // SECURITYFS_MAGIC
    0x7472_6163, // TRACEFS_MAGIC
    0xcafe_4a11, // BPF_FS_MAGIC
];

/// The root a target's paths are resolved in.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    shown: PathBuf,
}

/// What opening a path gave.
#[derive(Debug)]
pub enum Opened {
    /// A regular file, open for reading (or writing), and its metadata at the time.
    File { stat: FileStat, file: File },
    Dir {
        stat: FileStat,
        entries: Vec<DirEntry>,
    },
}

impl Root {
    /// The root of process `pid` (`/proc/PID/root`: its mount namespace's view).
    pub fn of_pid(pid: u32) -> Result<Self, FileFailure> {
        Self::at(Path::new(&format!("/proc/{pid}/root")))
    }

    /// The directory `path` as a root (tests, a copy's root).
    pub fn at(path: &Path) -> Result<Self, FileFailure> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| failure(e, &format!("cannot open the root {}", path.display())))?;
        Ok(Self {
            dir,
            shown: path.to_owned(),
        })
    }

    /// `path` opened inside the root with `flags` (symlinks followed unless `O_NOFOLLOW`).
    /// Nothing on procfs or sysfs is served: `/proc/1/environ` would hand out the
    /// environment to a session granted files but not `env`, `/proc/1/mem` the memory.
    fn resolve(&self, path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, FileFailure> {
        let fd = rustix::fs::openat2(
            &self.dir,
            path,
            flags | OFlags::CLOEXEC,
            mode,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| failure(e, path))?;
        let kind = rustix::fs::fstatfs(&fd)
            .map_err(|e| failure(e, path))?
            .f_type;
        // statfs's f_type is signed on some targets; the magic numbers are small positives.
        #[allow(clippy::unnecessary_cast, reason = "f_type's type differs by target")]
        let kind = kind as u64;
        if kind == rustix::fs::PROC_SUPER_MAGIC as u64 || KERNEL_FS.contains(&kind) {
            return Err(FileFailure {
                errno: Errno::ACCESS.raw_os_error(),
                message: format!(
                    "{path} is on the target's procfs, sysfs or another kernel filesystem, which is not served (its environment is `feature.env`)"
                ),
            });
        }
        Ok(fd)
    }

    /// Opens `path`: a regular file for reading (with `write`: after checking it may be
    /// written, emptied first with `truncate`), or a directory, whose entries are listed. Anything else (a
    /// device, a FIFO, a socket) is refused with `ENXIO`: its bytes are not a file's.
    pub fn open(&self, path: &str, write: bool, truncate: bool) -> Result<Opened, FileFailure> {
        // O_PATH first: opening a FIFO for reading would block, a device could act.
        let probe = self.resolve(path, OFlags::PATH, Mode::empty())?;
        let stat = stat_of(&probe, path)?;
        if stat.is_dir() {
            if write {
                return Err(failure(Errno::ISDIR, path));
            }
            let dir = self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
            return Ok(Opened::Dir {
                stat,
                entries: list(dir, path)?,
            });
        }
        if !stat.is_file() {
            return Err(FileFailure {
                errno: Errno::NXIO.raw_os_error(),
                message: format!("{path} is not a regular file or a directory"),
            });
        }
        if write {
            // The right to write (and the truncation) now; the bytes come from a read-only
            // descriptor, so a write-only file's content is not readable through it.
            let mut flags = OFlags::WRONLY;
            if truncate {
                flags |= OFlags::TRUNC;
            }
            drop(self.regular(path, flags, Mode::empty())?);
        }
        let fd = self.regular(path, OFlags::RDONLY, Mode::empty())?;
        let stat = stat_of(&fd, path)?;
        Ok(Opened::File {
            stat,
            file: File::from(fd),
        })
    }

    /// Creates `path` (mode 0644) if it does not exist, for a process that opened it with
    /// `O_CREAT` (`exclusive`: `O_EXCL`, an existing file is `EEXIST`).
    pub fn create(
        &self,
        path: &str,
        truncate: bool,
        exclusive: bool,
    ) -> Result<FileStat, FileFailure> {
        let mut flags = OFlags::WRONLY | OFlags::CREATE;
        if truncate {
            flags |= OFlags::TRUNC;
        }
        if exclusive {
            flags |= OFlags::EXCL;
        }
        let fd = self.regular(path, flags, Mode::from_bits_truncate(0o644))?;
        stat_of(&fd, path)
    }

    /// `path` opened with `flags`, refused unless it is a regular file. Non-blocking, so that
    /// a FIFO (or a file swapped for one since it was looked at) never holds a thread, and
    /// without a controlling terminal.
    fn regular(&self, path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, FileFailure> {
        let fd = self.resolve(path, flags | OFlags::NONBLOCK | OFlags::NOCTTY, mode)?;
        if !stat_of(&fd, path)?.is_file() {
            return Err(FileFailure {
                errno: Errno::NXIO.raw_os_error(),
                message: format!("{path} is not a regular file"),
            });
        }
        Ok(fd)
    }

    /// `stat` (`follow`) or `lstat` of `path`.
    pub fn stat(&self, path: &str, follow: bool) -> Result<FileStat, FileFailure> {
        let mut flags = OFlags::PATH;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = self.resolve(path, flags, Mode::empty())?;
        stat_of(&fd, path)
    }

    /// `access(path, mode)`, checked by the kernel with the caller's rights.
    pub fn access(&self, path: &str, mode: i32) -> Result<(), FileFailure> {
        let fd = self.resolve(path, OFlags::PATH, Mode::empty())?;
        let mode = Access::from_bits_truncate(u32::try_from(mode).unwrap_or(0));
        // faccessat2 takes no AT_EMPTY_PATH on every kernel; the descriptor's own name does.
        let own = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::access(own.as_str(), mode).map_err(|e| failure(e, path))
    }

    pub fn readlink(&self, path: &str) -> Result<String, FileFailure> {
        let fd = self.resolve(path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        let link = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| match e {
            // An empty path on something that is not a symlink.
            Errno::NOENT => failure(Errno::INVAL, path),
            e => failure(e, path),
        })?;
        Ok(link.to_string_lossy().into_owned())
    }

    /// Writes `data` at `offset` of the regular file `path`, cutting it there first with
    /// `truncate`.
    pub fn write(
        &self,
        path: &str,
        offset: u64,
        data: &[u8],
        truncate: bool,
    ) -> Result<(), FileFailure> {
        use std::os::unix::fs::FileExt;
        let file = File::from(self.regular(path, OFlags::WRONLY, Mode::empty())?);
        if truncate {
            file.set_len(offset).map_err(|e| io_failure(&e, path))?;
        }
        file.write_all_at(data, offset)
            .map_err(|e| io_failure(&e, path))
    }

    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Does `req`: an opened regular file comes back open (its bytes are the caller's to
    /// send), everything else as its answer.
    pub fn serve(&self, req: &FileRequest) -> Result<Served, FileFailure> {
        let answer = match req {
            FileRequest::Open {
                path,
                write,
                create,
                truncate,
                exclusive,
            } => {
                if *write && *create {
                    self.create(path, *truncate, *exclusive)?;
                }
                return Ok(match self.open(path, *write, *truncate)? {
                    Opened::File { stat, file } => Served::File { stat, file },
                    Opened::Dir { stat, entries } => {
                        Served::Answer(FileAnswer::Dir { stat, entries })
                    }
                });
            }
            FileRequest::Stat { path, follow } => FileAnswer::Stat(self.stat(path, *follow)?),
            FileRequest::Access { path, mode } => {
                self.access(path, *mode)?;
                FileAnswer::Done
            }
            FileRequest::Readlink { path } => FileAnswer::Link(self.readlink(path)?),
            FileRequest::Write {
                path,
                offset,
                data,
                truncate,
            } => {
                if data.len() > MAX_WRITE_CHUNK {
                    return Err(failure(Errno::FBIG, path));
                }
                self.write(path, *offset, data, *truncate)?;
                FileAnswer::Done
            }
        };
        Ok(Served::Answer(answer))
    }
}

/// What [`Root::serve`] did.
#[derive(Debug)]
pub enum Served {
    Answer(FileAnswer),
    /// A regular file opened for reading (or writing): the caller streams its bytes.
    File {
        stat: FileStat,
        file: File,
    },
}

fn stat_of(fd: &OwnedFd, path: &str) -> Result<FileStat, FileFailure> {
    // An O_PATH descriptor of a symlink (O_NOFOLLOW) is stat'ed as the link itself.
    let st = rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| failure(e, path))?;
    Ok(FileStat {
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
        nlink: st.st_nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blksize: u64::try_from(st.st_blksize).unwrap_or(4096),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: (st.st_atime, nanos(st.st_atime_nsec)),
        mtime: (st.st_mtime, nanos(st.st_mtime_nsec)),
        ctime: (st.st_ctime, nanos(st.st_ctime_nsec)),
    })
}

fn nanos(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(0)
}

/// A directory's entries (without `.` and `..`), symlinks with their targets.
fn list(dir: OwnedFd, path: &str) -> Result<Vec<DirEntry>, FileFailure> {
    use rustix::fs::FileType;
    let mut d = rustix::fs::Dir::read_from(&dir).map_err(|e| failure(e, path))?;
    let mut entries = Vec::new();
    let mut bytes = 0;
    while let Some(entry) = d.read() {
        let entry = entry.map_err(|e| failure(e, path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if entries.len() == MAX_DIR_ENTRIES {
            return Err(FileFailure {
                errno: Errno::FBIG.raw_os_error(),
                message: format!("{path} has more than {MAX_DIR_ENTRIES} entries"),
            });
        }
        let kind = match entry.file_type() {
            FileType::Unknown => 0,
            t => t.as_raw_mode(),
        };
        let link = (entry.file_type() == FileType::Symlink)
            .then(|| rustix::fs::readlinkat(&dir, entry.file_name(), Vec::new()).ok())
            .flatten()
            .map(|l| l.to_string_lossy().into_owned());
        bytes += name.len() + link.as_ref().map_or(0, String::len) + 16;
        if bytes > MAX_DIR_BYTES {
            return Err(FileFailure {
                errno: Errno::FBIG.raw_os_error(),
                message: format!(
                    "{path}: its listing is over {} MiB of names",
                    MAX_DIR_BYTES >> 20
                ),
            });
        }
        entries.push(DirEntry { name, kind, link });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The failure of a call on `path`, with the errno the process's own call would get.
pub fn failure(e: Errno, path: &str) -> FileFailure {
    let io = std::io::Error::from(e);
    FileFailure {
        errno: e.raw_os_error(),
        message: format!("{path}: {io}"),
    }
}

fn io_failure(e: &std::io::Error, path: &str) -> FileFailure {
    FileFailure {
        errno: e.raw_os_error().unwrap_or(Errno::IO.raw_os_error()),
        message: format!("{path}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("etc/app")).unwrap();
        std::fs::write(p.join("etc/app/config.yaml"), "key: value\n").unwrap();
        std::os::unix::fs::symlink("/etc/app/config.yaml", p.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", p.join("etc/up")).unwrap();
        let root = Root::at(p).unwrap();
        (dir, root)
    }

    /// A process's procfs would give what other grants guard (its environment, its memory).
    #[test]
    fn procfs_and_sysfs_are_not_served() {
        let root = Root::of_pid(std::process::id()).unwrap();
        assert!(root.stat("/etc", true).is_ok());
        // A cgroup filesystem, wherever this machine mounts one (v1 or v2).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let cgroup = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                matches!(f.get(2), Some(&("cgroup" | "cgroup2"))).then(|| f[1].to_owned())
            })
            .next()
            .expect("a cgroup filesystem is mounted");
        for path in [
            "/proc/self/environ",
            "/proc/1/mem",
            "/proc",
            "/sys/kernel",
            cgroup.as_str(),
        ] {
            let e = root.open(path, false, false).unwrap_err();
            assert_eq!(e.errno, Errno::ACCESS.raw_os_error(), "{path}: {e:?}");
            assert!(e.message.contains("procfs, sysfs"), "{e:?}");
            assert!(root.stat(path, true).is_err(), "{path}");
        }
    }

    #[test]
    fn absolute_symlinks_and_dotdot_stay_inside_the_root() {
        let (_d, root) = root();
        let Opened::File { mut file, stat } = root.open("/etc/link", false, false).unwrap() else {
            panic!("not a file")
        };
        let mut s = String::new();
        file.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), stat.size), ("key: value\n", 11));
        // The host's /etc/passwd exists; inside the root there is none.
        let e = root.open("/etc/up", false, false).unwrap_err();
        assert_eq!(e.errno, Errno::NOENT.raw_os_error(), "{e:?}");
        let e = root.stat("/../../etc/passwd", true).unwrap_err();
        assert_eq!(e.errno, Errno::NOENT.raw_os_error(), "{e:?}");
    }

    #[test]
    fn lstat_readlink_and_listing() {
        let (_d, root) = root();
        let link = root.stat("/etc/link", false).unwrap();
        assert_eq!(link.mode & 0o170000, 0o120000);
        assert_eq!(link.size, "/etc/app/config.yaml".len() as u64);
        assert!(root.stat("/etc/link", true).unwrap().is_file());
        assert_eq!(root.readlink("/etc/link").unwrap(), "/etc/app/config.yaml");
        assert_eq!(
            root.readlink("/etc/app").unwrap_err().errno,
            Errno::INVAL.raw_os_error()
        );
        let Opened::Dir { entries, stat } = root.open("/etc", false, false).unwrap() else {
            panic!("not a dir")
        };
        assert!(stat.is_dir());
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            [("app", 0o040000), ("link", 0o120000), ("up", 0o120000)]
        );
        assert_eq!(entries[1].link.as_deref(), Some("/etc/app/config.yaml"));
        root.access("/etc/app/config.yaml", libc_r_ok()).unwrap();
        assert_eq!(
            root.access("/nope", 0).unwrap_err().errno,
            Errno::NOENT.raw_os_error()
        );
    }

    #[test]
    fn writes_change_the_file_in_place() {
        let (d, root) = root();
        root.write("/etc/app/config.yaml", 0, b"new", true).unwrap();
        root.write("/etc/app/config.yaml", 3, b"er", false).unwrap();
        let got = std::fs::read_to_string(d.path().join("etc/app/config.yaml")).unwrap();
        assert_eq!(got, "newer");
        root.create("/etc/app/fresh", false, false).unwrap();
        assert!(d.path().join("etc/app/fresh").exists());
        let e = root.create("/etc/app/fresh", false, true).unwrap_err();
        assert_eq!(e.errno, Errno::EXIST.raw_os_error(), "O_EXCL: {e:?}");
        let e = root.write("/etc/app", 0, b"x", false).unwrap_err();
        assert_eq!(e.errno, Errno::ISDIR.raw_os_error(), "{e:?}");
        // A FIFO is refused at once, never waited on for a reader or a writer.
        let fifo = d.path().join("etc/fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for e in [
            root.write("/etc/fifo", 0, b"x", false).unwrap_err(),
            root.create("/etc/fifo", false, false).unwrap_err(),
            root.open("/etc/fifo", false, false).unwrap_err(),
        ] {
            assert_eq!(e.errno, Errno::NXIO.raw_os_error(), "{e:?}");
        }
    }

    fn libc_r_ok() -> i32 {
        Access::READ_OK.bits() as i32
    }
}
