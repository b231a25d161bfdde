//! The target's files for the layer: each file operation the process makes on a remote path is asked of the
//! operator, and an opened file or directory becomes a local copy the layer opens in its place (see
//! `mirrord_layer::files`). Copies live in the layer socket's directory, which only this user can enter, and go
//! with it when the session ends; a copy the process only reads is unlinked by the layer as soon as it is open.
//!
//! A copy opened for writing is written back when the layer says the process closed or synced it, and once more,
//! if it changed since, when the process ends ([`Copies::flush`]): a descriptor handed to a program it `exec`s
//! (`cat a > /data/out`), or left open by a shell that ends with `_exit`, is written back too. Write-backs of
//! one target path never interleave (whichever copies they come from), the target's file is cut to its new
//! length only by the last chunk (never left empty while the rest is on its way), and a copy that did not
//! change is not written (an `O_RDWR` open only read leaves the target's file as it is).
//!
//! Whether a copy changed is its modification time and size. The kernel's file times are coarse (a few ms), so a
//! copy's time is set back to the target file's own when it is fetched and after each write-back: a write of the
//! same length right after (`echo 1 > f` over `0`) still moves it.

use super::{Ask, FileGot, Op};
use mirrord_layer_proto::{Reply, Request, Stat};
use mirrord_protocol::files::MAX_WRITE_CHUNK;
use mirrord_protocol::{ClientMessage, FileAnswer, FileRequest, FileStat};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// How long a metadata operation may take, end to end.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long opening a file may take, its bytes included (the layer waits 120 s).
const OPEN_TIMEOUT: Duration = Duration::from_secs(110);

/// How long writing back what changed may hold the end of the session.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the copies go, and the ones opened for writing.
pub struct Copies {
    dir: PathBuf,
    next: AtomicU64,
    writable: Mutex<HashMap<PathBuf, Arc<Writable>>>,
    /// One write-back at a time per target path.
    writing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A file operation failed for a reason the developer should know (said once).
    warned: AtomicBool,
}

/// A copy opened for writing: its path in the target, and what it looked like when it last
/// matched the target's file (as fetched, or as last written back).
struct Writable {
    path: String,
    /// The target file's modification time when fetched: the copy's between writes.
    fetched: SystemTime,
    seen: tokio::sync::Mutex<Option<(SystemTime, u64)>>,
}

/// Sets `local`'s modification time back to `at` (never to within the last second, where
/// a write could leave it unchanged), and says what it now looks like.
fn settle(local: &Path, at: SystemTime) -> Option<(SystemTime, u64)> {
    let latest = SystemTime::now() - Duration::from_secs(1);
    let file = std::fs::File::options().write(true).open(local).ok()?;
    file.set_modified(at.min(latest)).ok()?;
    mark(local)
}

/// A `FileStat` time as a `SystemTime`.
fn time_of((secs, nanos): (i64, u32)) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::new(s, nanos),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// A copy's modification time and size: whether it changed.
fn mark(local: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(local).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Copies {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir(&dir)?;
        Ok(Self {
            dir,
            next: AtomicU64::new(0),
            writable: Mutex::default(),
            writing: Mutex::default(),
            warned: AtomicBool::new(false),
        })
    }

    fn track(&self, local: &Path, path: String, fetched: SystemTime) {
        let w = Writable {
            path,
            fetched,
            seen: tokio::sync::Mutex::new(settle(local, fetched)),
        };
        self.writable
            .lock()
            .expect("copies lock")
            .insert(local.to_owned(), Arc::new(w));
    }

    /// Writes back every copy opened for writing that changed since it last matched the
    /// target's file (the process ended).
    pub async fn flush(&self, ops: &mpsc::Sender<Op>) {
        let all: Vec<(PathBuf, Arc<Writable>)> = self
            .writable
            .lock()
            .expect("copies lock")
            .iter()
            .map(|(l, w)| (l.clone(), Arc::clone(w)))
            .collect();
        let flushing = async {
            for (local, w) in all {
                if let Err(errno) = self.write_back(ops, &local, &w).await {
                    eprintln!(
                        "mirrordctl: {} was not written back to the target when the process ended: {}",
                        w.path,
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
            }
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, flushing).await.is_err() {
            eprintln!(
                "mirrordctl: writing the target's files back took over {} s; the rest is lost",
                FLUSH_TIMEOUT.as_secs()
            );
        }
    }

    /// Writes `local` back to `w.path` if it changed, one write-back of it at a time.
    async fn write_back(
        &self,
        ops: &mpsc::Sender<Op>,
        local: &Path,
        w: &Writable,
    ) -> Result<(), i32> {
        let mut seen = w.seen.lock().await;
        let now = mark(local);
        if now.is_some() && now == *seen {
            return Ok(());
        }
        let path_lock = Arc::clone(
            self.writing
                .lock()
                .expect("copies lock")
                .entry(w.path.clone())
                .or_default(),
        );
        let _writing = path_lock.lock().await;
        write_back(ops, local, w.path.clone()).await?;
        // What a write from now on is compared with; a copy written to while this went is
        // left as it is, and differs from `now`: written back again at its next turn.
        *seen = match mark(local) == now {
            true => settle(local, w.fetched).or(now),
            false => now,
        };
        Ok(())
    }

    /// Says the first failure a developer could act on (an old agent, a target whose root
    /// cannot be reached); the usual ones (no such file, read-only) are the process's own.
    fn note_failure(&self, errno: i32, message: &str) {
        use nix::libc::{EACCES, EEXIST, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY, EROFS};
        if [ENOENT, ENOTDIR, EISDIR, EEXIST, EROFS, EACCES, ENOTEMPTY].contains(&errno) {
            return;
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("mirrordctl: warning: a file operation failed in the target: {message}");
        }
    }

    fn next(&self) -> PathBuf {
        self.dir
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string())
    }
}

/// The paths that stay local by default for the process running `program`, as mirrord computes them in the
/// process: its working directory (unless `/`), its executable, the temporary directory, and the hidden files of
/// the home directory ($HOME's and the password database's).
pub fn process_local(program: Option<&Path>) -> Vec<String> {
    let mut patterns = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        let cwd = cwd.to_string_lossy();
        if cwd != "/" {
            patterns.push(format!(
                "^{}(/|$)",
                regex::escape(cwd.trim_end_matches('/'))
            ));
        }
    }
    if let Some(exe) = program {
        let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_owned());
        patterns.push(format!("{}$", regex::escape(&exe.to_string_lossy())));
    }
    patterns.push(format!(
        "^{}",
        regex::escape(&std::env::temp_dir().to_string_lossy())
    ));
    // $HOME, and the user's home as the password database has it (a shim under /root/.pyenv
    // stays local for a process whose HOME was changed).
    let passwd = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir.to_string_lossy().into_owned());
    let mut homes: Vec<String> = std::env::var("HOME")
        .ok()
        .into_iter()
        .chain(passwd)
        .collect();
    homes.dedup();
    for home in homes {
        patterns.push(format!(
            "^{}/\\.",
            regex::escape(home.trim_end_matches('/'))
        ));
    }
    patterns
}

/// Answers one of the layer's file requests.
pub async fn serve(
    req: Request,
    ops: &mpsc::Sender<Op>,
    out: &mpsc::Sender<ClientMessage>,
    copies: &Copies,
) -> Reply {
    let ask = |req| ask(ops, copies, req, OP_TIMEOUT);
    let result = match req {
        Request::Open { path, flags } => open(ops, out, copies, path, flags).await,
        Request::Stat { path, follow } => match ask(FileRequest::Stat { path, follow }).await {
            Ok(FileGot::Answer(FileAnswer::Stat(s))) => Ok(Reply::Stat(stat(&s))),
            other => Err(failed(other)),
        },
        Request::Access { path, mode } => match ask(FileRequest::Access { path, mode }).await {
            Ok(FileGot::Answer(FileAnswer::Done)) => Ok(Reply::Done),
            other => Err(failed(other)),
        },
        Request::Readlink { path } => match ask(FileRequest::Readlink { path }).await {
            Ok(FileGot::Answer(FileAnswer::Link(l))) => Ok(Reply::Link(l)),
            other => Err(failed(other)),
        },
        Request::WriteBack { local, .. } => {
            let w = copies
                .writable
                .lock()
                .expect("copies lock")
                .get(&local)
                .cloned();
            match w {
                Some(w) => copies
                    .write_back(ops, &local, &w)
                    .await
                    .map(|()| Reply::Done),
                // Not one of ours: a write-back reads nothing else.
                None => Err(nix::libc::EINVAL),
            }
        }
        _ => Err(nix::libc::ENOSYS),
    };
    result.unwrap_or_else(|errno| Reply::FileFailed { errno })
}

/// The errno for an answer that is not the one wanted.
fn failed(got: Result<FileGot, i32>) -> i32 {
    match got {
        Err(errno) => errno,
        Ok(_) => nix::libc::EIO,
    }
}

async fn ask(
    ops: &mpsc::Sender<Op>,
    copies: &Copies,
    req: FileRequest,
    timeout: Duration,
) -> Result<FileGot, i32> {
    let (reply, answer) = oneshot::channel();
    if ops.send(Op::Ask(Ask::File { req, reply })).await.is_err() {
        return Err(nix::libc::EIO);
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Ok(got))) => Ok(got),
        Ok(Ok(Err(f))) => {
            tracing::debug!(target: "mirrordctl::layer", errno = f.errno, message = %f.message, "a file operation failed in the target");
            copies.note_failure(f.errno, &f.message);
            Err(f.errno)
        }
        // The session is over, or the operator did not answer in time.
        Ok(Err(_)) | Err(_) => Err(nix::libc::EIO),
    }
}

async fn open(
    ops: &mpsc::Sender<Op>,
    out: &mpsc::Sender<ClientMessage>,
    copies: &Copies,
    path: String,
    flags: i32,
) -> Result<Reply, i32> {
    use nix::libc::{O_ACCMODE, O_CREAT, O_EXCL, O_RDONLY, O_TRUNC};
    let write = flags & O_ACCMODE != O_RDONLY || flags & (O_TRUNC | O_CREAT) != 0;
    let req = FileRequest::Open {
        path: path.clone(),
        write,
        create: flags & O_CREAT != 0,
        truncate: flags & O_TRUNC != 0,
        exclusive: flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL,
    };
    let local = copies.next();
    // One deadline for the answer and the bytes, inside the layer's own wait.
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    match ask(ops, copies, req, OPEN_TIMEOUT).await? {
        FileGot::Answer(FileAnswer::Dir { stat: s, entries }) => {
            // Off this (single) thread: a large listing is many files to make.
            let at = local.clone();
            tokio::task::spawn_blocking(move || placeholders(&at, &entries))
                .await
                .map_err(|_| nix::libc::EIO)?
                .map_err(|e| e.raw_os_error().unwrap_or(nix::libc::EIO))?;
            Ok(Reply::Opened {
                local,
                stat: stat(&s),
                dir: true,
            })
        }
        FileGot::Bytes {
            stat: s,
            conn,
            mut outlet,
        } => {
            let copied = async {
                let mut file = tokio::fs::File::create(&local).await?;
                let mut written = 0u64;
                while let Some(bytes) = outlet.recv().await {
                    file.write_all(&bytes).await?;
                    written += bytes.len() as u64;
                }
                file.flush().await?;
                Ok::<_, std::io::Error>(written)
            };
            // Within the layer's own wait: a stream that stalls is given up, not held.
            let copied = tokio::time::timeout_at(deadline, copied)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            let _ = out.send(ClientMessage::ConnClose { conn }).await;
            let written = match copied {
                Ok(n) if n >= s.size => n,
                Ok(n) => {
                    // Cut short (the target's side failed): never a shorter file as if whole.
                    tracing::warn!(target: "mirrordctl::layer", written = n, size = s.size, "a remote file arrived incomplete");
                    copies.note_failure(
                        nix::libc::EIO,
                        &format!("{path} arrived incomplete ({n} of {} bytes)", s.size),
                    );
                    let _ = tokio::fs::remove_file(&local).await;
                    return Err(nix::libc::EIO);
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&local).await;
                    return Err(e.raw_os_error().unwrap_or(nix::libc::EIO));
                }
            };
            if write {
                copies.track(&local, path, time_of(s.mtime));
            }
            let mut st = stat(&s);
            st.size = written;
            Ok(Reply::Opened {
                local,
                stat: st,
                dir: false,
            })
        }
        FileGot::Answer(_) => Err(nix::libc::EIO),
    }
}

/// A directory of the target's entries' names and types: empty files, directories and symlinks.
fn placeholders(dir: &Path, entries: &[mirrord_protocol::DirEntry]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    for e in entries {
        // A name that is not one path component would land elsewhere.
        if e.name.is_empty() || e.name.contains('/') || e.name == "." || e.name == ".." {
            continue;
        }
        let at = dir.join(&e.name);
        let made = match e.kind & 0o170000 {
            0o040000 => std::fs::create_dir(&at),
            0o120000 => std::os::unix::fs::symlink(e.link.as_deref().unwrap_or(""), &at),
            _ => std::fs::File::create(&at).map(drop),
        };
        if let Err(err) = made {
            tracing::debug!(target: "mirrordctl::layer", name = %e.name, error = %err, "a directory entry has no placeholder");
        }
    }
    Ok(())
}

/// [`ask`] without a [`Copies`] to warn through (write-backs report their own failures).
async fn ask_plain(ops: &mpsc::Sender<Op>, req: FileRequest) -> Result<FileGot, i32> {
    let (reply, answer) = oneshot::channel();
    if ops.send(Op::Ask(Ask::File { req, reply })).await.is_err() {
        return Err(nix::libc::EIO);
    }
    match tokio::time::timeout(OP_TIMEOUT, answer).await {
        Ok(Ok(Ok(got))) => Ok(got),
        Ok(Ok(Err(f))) => {
            eprintln!(
                "mirrordctl: writing back to the target failed: {}",
                f.message
            );
            Err(f.errno)
        }
        Ok(Err(_)) | Err(_) => Err(nix::libc::EIO),
    }
}

/// Writes the copy at `local` back to the target's `path`, whole, in chunks.
async fn write_back(ops: &mpsc::Sender<Op>, local: &Path, path: String) -> Result<Reply, i32> {
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| e.raw_os_error().unwrap_or(nix::libc::EIO))?;
    let mut offset = 0u64;
    loop {
        let mut data = Vec::with_capacity(MAX_WRITE_CHUNK);
        (&mut file)
            .take(MAX_WRITE_CHUNK as u64)
            .read_to_end(&mut data)
            .await
            .map_err(|e| e.raw_os_error().unwrap_or(nix::libc::EIO))?;
        let n = data.len() as u64;
        // Only the last chunk cuts the file to its length: until then the target's file
        // keeps its old bytes past what was written, never shorter or empty.
        let req = FileRequest::Write {
            path: path.clone(),
            offset,
            data,
            truncate: n < MAX_WRITE_CHUNK as u64,
        };
        match ask_plain(ops, req).await? {
            FileGot::Answer(FileAnswer::Done) => {}
            _ => return Err(nix::libc::EIO),
        }
        offset += n;
        if n < MAX_WRITE_CHUNK as u64 {
            return Ok(Reply::Done);
        }
    }
}

fn stat(s: &FileStat) -> Stat {
    Stat {
        dev: s.dev,
        ino: s.ino,
        mode: s.mode,
        nlink: s.nlink,
        uid: s.uid,
        gid: s.gid,
        rdev: s.rdev,
        size: s.size,
        blksize: s.blksize,
        blocks: s.blocks,
        atime: s.atime,
        mtime: s.mtime,
        ctime: s.ctime,
    }
}
