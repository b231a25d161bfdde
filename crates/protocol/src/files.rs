//! A session's view of its target's files (mirrord's `feature.fs`): what the developer's
//! process asks of them and what comes back. Paths are absolute, as the target's container
//! sees them (its root, its mounts); the target resolves them inside that root, symlinks
//! included, so nothing outside it can be named.

use serde::{Deserialize, Serialize};

/// How much of the target's filesystem a session asked for (`feature.fs.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilesAccess {
    /// No remote files (`local`).
    #[default]
    None,
    /// Read remote files (`read`, `localwithoverrides`, without `read_write` patterns);
    /// nothing is ever written remotely.
    Read,
    /// Read and write remote files (`write`, or any mode with `read_write` patterns).
    Write,
}

impl FilesAccess {
    pub fn reads(self) -> bool {
        self != FilesAccess::None
    }

    pub fn writes(self) -> bool {
        self == FilesAccess::Write
    }
}

/// One operation on the target's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileRequest {
    /// Open `path` (symlinks followed): a regular file's bytes come as the connection of
    /// [`FileAnswer::File`], a directory's entries in [`FileAnswer::Dir`]. With `write`,
    /// `create` makes a missing file (mode 0644, as the caller's umask would mostly leave
    /// it) and `truncate` empties it; `exclusive` (`O_EXCL`) fails if it exists.
    Open {
        path: String,
        write: bool,
        create: bool,
        truncate: bool,
        #[serde(default)]
        exclusive: bool,
    },
    /// `stat` (`follow`) or `lstat`.
    Stat {
        path: String,
        follow: bool,
    },
    /// `access(path, mode)` (`F_OK`, or `R_OK | W_OK | X_OK` bits).
    Access {
        path: String,
        mode: i32,
    },
    Readlink {
        path: String,
    },
    /// Writes `data` at `offset` of an existing regular file; `truncate` first cuts it to
    /// `offset` (a whole file written back starts with offset 0 and `truncate`).
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
        truncate: bool,
    },
}

impl FileRequest {
    pub fn path(&self) -> &str {
        match self {
            FileRequest::Open { path, .. }
            | FileRequest::Stat { path, .. }
            | FileRequest::Access { path, .. }
            | FileRequest::Readlink { path }
            | FileRequest::Write { path, .. } => path,
        }
    }

    /// Whether it changes the target's files.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            FileRequest::Write { .. } | FileRequest::Open { write: true, .. }
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            FileRequest::Open { .. } => "open",
            FileRequest::Stat { .. } => "stat",
            FileRequest::Access { .. } => "access",
            FileRequest::Readlink { .. } => "readlink",
            FileRequest::Write { .. } => "write",
        }
    }
}

/// A file's metadata as the target's `stat` gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl FileStat {
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }

    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// One entry of a directory, as `readdir` gives it (`.` and `..` left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    /// The `S_IF*` type bits of its mode (0 when unknown).
    pub kind: u32,
    /// A symlink's target, so that a listing needs no `readlink` per link.
    pub link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileAnswer {
    /// An opened regular file: its bytes (all of them, then the end) flow on `conn` as a
    /// connection's, read at the time of the open.
    File {
        stat: FileStat,
        conn: u64,
    },
    /// An opened directory and its entries.
    Dir {
        stat: FileStat,
        entries: Vec<DirEntry>,
    },
    Stat(FileStat),
    Link(String),
    Done,
}

/// Why an operation failed: the errno the process's own call would have got (`ENOENT`,
/// `EACCES`, `EROFS`...), and what to tell the developer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFailure {
    pub errno: i32,
    pub message: String,
}

/// The most entries an opened directory gives, and the most bytes of names and link targets
/// (a listing travels in one frame, and through an agent as one JSON reply).
pub const MAX_DIR_ENTRIES: usize = 65_536;
pub const MAX_DIR_BYTES: usize = 2 << 20;
/// The largest [`FileRequest::Write`] chunk: well inside the operator's limit on a client's
/// frame (1 MiB).
pub const MAX_WRITE_CHUNK: usize = 512 * 1024;
