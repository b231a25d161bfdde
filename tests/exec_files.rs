//! `mirrordctl exec` reads (and, in `write` mode, writes) the target's files: a process we did not write
//! (`cat`, `ls`, `stat`, `sha256sum`, python) sees the target's files where the target has its own (a private
//! mount), and this machine's files everywhere else.
//!
//! The replica runs in its own mount namespace with a tmpfs over a directory that also exists here with other
//! content, as a pod's volume hides whatever the node has at that path.

use mirrord_e2e::{ctl, wait_for, Operator, OperatorOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes both sides make the same way: python's seeded random (the replica writes them, the test hashes them).
const MAKE: &str = r#"
import random, sys
def blob(seed, n):
    random.seed(seed)
    return random.randbytes(n)
"#;

fn python(code: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", code])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn sha256_of(seed: u32, n: usize) -> String {
    python(&format!(
        "{MAKE}\nimport hashlib\nprint(hashlib.sha256(blob({seed}, {n})).hexdigest())"
    ))
}

/// Opens a remote directory (`os.listdir`: opendir/closedir) and a remote stream (`fopen` and
/// `fclose` through ctypes), then a local file, which gets a number one of them had: what
/// `fstat` says of it must be the local file.
const REUSE: &str = r#"
import ctypes, os, sys
app, local = sys.argv[1], sys.argv[2]
os.listdir(app)
with open(local) as l:
    after_closedir = os.fstat(l.fileno()).st_size
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
f = libc.fopen((app + "/config.yaml").encode(), b"r")
libc.fclose(ctypes.c_void_p(f))
with open(local) as l:
    print("reused:", after_closedir, os.fstat(l.fileno()).st_size)
"#;

/// A remote file's descriptor behaves like a real one: positions shared by `dup` and across
/// `fork`, close-on-exec, `mmap`, `sendfile`.
const DESCRIPTORS: &str = r#"
import mmap, os, sys, tempfile
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
first = os.read(fd, 7)
twin = os.dup(fd)
pid = os.fork()
if pid == 0:
    os.write(1, b"child: " + os.read(twin, 100))
    os._exit(0)
os.waitpid(pid, 0)
with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
    mapped = bytes(m)
out = tempfile.TemporaryFile()
sent = os.sendfile(out.fileno(), fd, 0, 100)
out.seek(0)
print("descriptors:", first.decode(), "| inheritable", os.get_inheritable(fd), "| mapped", mapped.decode().strip(), "| sent", sent, out.read().decode().strip())
"#;

struct Fixture {
    op: Operator,
    /// The directory the replica has its own content in (here: `local-config`).
    app: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Option<Fixture> {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "unshare -m is needed under CI"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("config.yaml"), "local-config\n").unwrap();
    let setup = format!(
        "{MAKE}\nimport os\nos.umask(0o022)\nd = {app:?}\nopen(d + '/config.yaml', 'w').write('remote-config\\n')\nos.mkdir(d + '/sub')\nopen(d + '/sub/inner.txt', 'w').write('inner\\n')\nos.symlink('config.yaml', d + '/link')\nos.chmod(d + '/config.yaml', 0o640)\nopen(d + '/big', 'wb').write(blob(7, 50 << 20))\nfor i in range(16):\n    open(d + f'/part{{i}}', 'wb').write(blob(100 + i, 1 << 20))\n",
        app = app.to_str().unwrap()
    );
    let script = dir.path().join("setup.py");
    std::fs::write(&script, setup).unwrap();
    let inner = format!(
        "mount -t tmpfs none {app} && python3 {script} && exec python3 {replica} {{port}} api",
        app = app.display(),
        script = script.display(),
        replica = mirrord_e2e::fixture("replica.py").display(),
    );
    let command = format!("exec unshare -m --propagation private sh -c {inner:?}");
    let op = Operator::start_with(OperatorOptions {
        targets: format!(
            "[[targets]]\nname = \"api\"\nreplicas = 1\ncommand = [\"sh\", \"-c\", {command:?}]\n[[targets.ports]]\nport = 80\nlisten = \"{}\"\n",
            mirrord_e2e::free_addr()
        ),
        ..Default::default()
    });
    let ready = wait_for(Duration::from_secs(60), || {
        (!op.events("replica ready").is_empty()).then_some(())
    });
    assert!(ready.is_some(), "the replica did not start");
    Some(Fixture { op, app, _dir: dir })
}

/// `exec` of `script` (sh) with the mirrord config `config` (JSON), as `creds`.
fn exec(
    f: &Fixture,
    creds: &Path,
    flags: &[&str],
    config: &str,
    script: &str,
) -> (bool, String, String) {
    let file = f
        ._dir
        .path()
        .join(format!("mirrord-{}.json", rand_suffix()));
    std::fs::write(&file, config).unwrap();
    let mut args = vec![
        "exec",
        "-t",
        "deployment/api",
        "-n",
        "default",
        "-f",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", script]);
    let out = ctl(creds, &args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn config(f: &Fixture, fs: &str) -> String {
    format!(
        r#"{{"feature": {{"network": {{"incoming": "off", "outgoing": false, "dns": false}}, "env": false, "fs": {fs}}}}}"#
    )
    .replace("APP", &regex_escape(f.app.to_str().unwrap()))
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\\\.")
}

#[test]
fn programs_we_did_not_write_read_the_targets_files() {
    let Some(f) = fixture() else { return };
    let alice = f.op.issue("alice");
    let app = f.app.display().to_string();
    // mirrord's order: `not_found` beats `read_only`, which beats `local` (so `local` does not carve a path out
    // of `read_only`).
    let cfg = config(
        &f,
        r#"{"mode": "read", "read_only": ["^APP"], "local": ["^APP/sub/inner"], "not_found": ["^APP/hidden"]}"#,
    );
    let reuse = f._dir.path().join("reuse.py");
    std::fs::write(&reuse, REUSE).unwrap();
    let local = f._dir.path().join("local.txt");
    std::fs::write(&local, "local 13 byte").unwrap();
    let descriptors = f._dir.path().join("descriptors.py");
    std::fs::write(&descriptors, DESCRIPTORS).unwrap();
    let (reuse, local, descriptors) = (reuse.display(), local.display(), descriptors.display());
    let script = format!(
        "cat {app}/config.yaml; \
         python3 -c 'print(open(\"{app}/link\").read().strip())'; \
         ls -l {app} | grep -v '^total' | awk '{{print $1, $NF}}' | sort -k2; \
         stat -c '%s %a %F' {app}/config.yaml {app}/link; stat -c '%a %F' {app}/sub; \
         stat -L -c 'followed %s %F' {app}/link; \
         cat {app}/sub/inner.txt; \
         cat {app}/hidden || echo 'hidden: not found'; \
         (echo changed > {app}/config.yaml) 2>&1 | sed 's/.*: //'; \
         sha256sum {app}/big | cut -c1-64; \
         python3 {reuse} {app} {local}; \
         python3 {descriptors} {app}/config.yaml"
    );
    let (ok, out, err) = exec(&f, &alice, &[], &cfg, &script);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !err.contains("ls:"),
        "every entry is stat'ed in the target:\n{err}"
    );
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("context:") && !l.starts_with("session"))
        .collect();
    let expected_big = sha256_of(7, 50 << 20);
    let want = [
        "remote-config".to_owned(),
        "remote-config".to_owned(),
        "-rw-r--r-- big".to_owned(),
        "-rw-r----- config.yaml".to_owned(),
        "lrwxrwxrwx config.yaml".to_owned(), // `ls -l`'s last field of a link is its target
        "-rw-r--r-- part0".to_owned(),
    ];
    for w in &want {
        assert!(
            lines.iter().any(|l| l == w),
            "missing {w:?} in:\n{out}\nstderr:\n{err}"
        );
    }
    for w in [
        "14 640 regular file".to_owned(),
        "11 777 symbolic link".to_owned(),
        "followed 14 regular file".to_owned(),
        "inner".to_owned(),
        "hidden: not found".to_owned(),
        "Read-only file system".to_owned(),
        expected_big,
    ] {
        assert!(
            lines.iter().any(|l| *l == w),
            "missing {w:?} in:\n{out}\nstderr:\n{err}"
        );
    }
    assert!(lines.contains(&"755 directory"), "{out}");
    // A remote directory's and a remote stream's descriptors are forgotten when glibc closes
    // them itself (closedir, fclose): the next file to get the number is a local one.
    assert!(lines.contains(&"reused: 13 13"), "{out}\n{err}");
    assert!(lines.contains(&"child: config"), "{out}\n{err}");
    assert!(
        lines.contains(&"descriptors: remote- | inheritable False | mapped remote-config | sent 14 remote-config"),
        "{out}\n{err}"
    );
    assert_eq!(
        std::fs::read_to_string(f.app.join("config.yaml")).unwrap(),
        "local-config\n",
        "this machine's file is untouched"
    );

    // Without a pattern naming it, the directory is local (mirrord's default local list has /tmp).
    let (ok, out, _) = exec(
        &f,
        &alice,
        &[],
        &config(&f, r#""read""#),
        &format!("cat {app}/config.yaml"),
    );
    assert!(ok && out.contains("local-config"), "{out}");
    // --fs-mode local: nothing remote, whatever the file names (names resolve remotely, so the session has
    // something to ask for).
    let with_dns = cfg.replace(r#""dns": false"#, r#""dns": true"#);
    let (ok, out, err) = exec(
        &f,
        &alice,
        &["--fs-mode", "local"],
        &with_dns,
        &format!("cat {app}/config.yaml"),
    );
    assert!(ok && out.contains("local-config"), "{out}\n{err}");
}

#[test]
fn sixteen_threads_read_different_remote_files_at_once() {
    let Some(f) = fixture() else { return };
    let alice = f.op.issue("alice");
    let app = f.app.display().to_string();
    let cfg = config(&f, r#"{"read_only": "^APP"}"#);
    let code = format!(
        "import hashlib, threading\nout = {{}}\ndef read(i):\n    with open('{app}/part%d' % i, 'rb') as f:\n        out[i] = hashlib.sha256(f.read()).hexdigest()\nts = [threading.Thread(target=read, args=(i,)) for i in range(16)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nfor i in range(16):\n    print('part', i, out[i])\n"
    );
    let script_file = f._dir.path().join("threads.py");
    std::fs::write(&script_file, code).unwrap();
    let (ok, out, err) = exec(
        &f,
        &alice,
        &[],
        &cfg,
        &format!("python3 {}", script_file.display()),
    );
    assert!(ok, "{out}\n{err}");
    for i in 0..16u32 {
        let want = format!("part {i} {}", sha256_of(100 + i, 1 << 20));
        assert!(
            out.lines().any(|l| l == want),
            "missing {want:?} in:\n{out}\n{err}"
        );
    }
}

#[test]
fn write_mode_writes_back_and_is_an_admins_right() {
    let Some(f) = fixture() else { return };
    let app = f.app.display().to_string();
    let cfg = config(&f, r#"{"mode": "write", "read_write": "^APP"}"#);
    let script = format!("echo written-remotely > {app}/config.yaml && cat {app}/config.yaml");
    let (ok, out, err) = exec(&f, &f.op.issue("bob"), &[], &cfg, &script);
    assert!(
        !ok,
        "a developer may not write the target's files:\n{out}\n{err}"
    );
    assert!(
        err.contains("only an admin may") && err.contains("feature.fs.mode `read`"),
        "{err}"
    );

    let admin = f.op.issue_admin("root-admin");
    let (ok, out, err) = exec(&f, &admin, &[], &cfg, &script);
    assert!(ok && out.contains("written-remotely"), "{out}\n{err}");
    // A new file of 3 MB, written back in 512 KiB chunks.
    let make =
        format!("{MAKE}\nwith open('{app}/made', 'wb') as f:\n    f.write(blob(42, 3 << 20))\n");
    let maker = f._dir.path().join("make.py");
    std::fs::write(&maker, make).unwrap();
    let (ok, out, err) = exec(
        &f,
        &admin,
        &[],
        &cfg,
        &format!("python3 {}", maker.display()),
    );
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = exec(
        &f,
        &f.op.issue("alice"),
        &[],
        &config(&f, r#"{"read_only": "^APP"}"#),
        &format!("sha256sum {app}/made | cut -c1-64"),
    );
    assert!(ok && out.contains(&sha256_of(42, 3 << 20)), "{out}\n{err}");
    assert!(
        !f.app.join("made").exists(),
        "nothing was made on this machine"
    );
    // A descriptor handed to a program the shell execs (`cat` with its redirect), and an
    // O_EXCL create of a file the target has.
    let src = f._dir.path().join("src.txt");
    std::fs::write(&src, "through-an-exec\n").unwrap();
    let (ok, out, err) = exec(
        &f,
        &admin,
        &[],
        &cfg,
        &format!(
            "cat {} > {app}/redirected; python3 -c 'import os; os.open(\"{app}/config.yaml\", os.O_CREAT | os.O_EXCL | os.O_WRONLY)' 2>&1 | tail -1",
            src.display()
        ),
    );
    assert!(ok && out.contains("FileExistsError"), "{out}\n{err}");
    let (ok, out, err) = exec(
        &f,
        &f.op.issue("alice"),
        &[],
        &config(&f, r#"{"read_only": "^APP"}"#),
        &format!("cat {app}/redirected {app}/config.yaml"),
    );
    assert!(
        ok && out.contains("through-an-exec\nwritten-remotely"),
        "{out}\n{err}"
    );
    // A descriptor bash never closes goes back at its exit (the layer's exit hook; under
    // dash, which ends with `_exit`, mirrordctl's flush when the process ends).
    let (ok, out, err) = exec(
        &f,
        &admin,
        &[],
        &cfg,
        &format!("bash -c 'exec 3> {app}/at-exit; echo at-exit >&3'"),
    );
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = exec(
        &f,
        &f.op.issue("alice"),
        &[],
        &config(&f, r#"{"read_only": "^APP"}"#),
        &format!("cat {app}/at-exit"),
    );
    assert!(ok && out.contains("at-exit"), "{out}\n{err}");
    // A write of the same length at once after the open (no truncation: the copy's size
    // and coarse time alone would not move) is written back.
    let (ok, out, err) = exec(
        &f,
        &admin,
        &[],
        &cfg,
        &format!("python3 -c \"f = open('{app}/config.yaml', 'r+'); f.write('W'); f.close()\""),
    );
    assert!(ok, "{out}\n{err}");
    // Another session reads what the first wrote back; this machine's file is untouched.
    let read = config(&f, r#"{"read_only": "^APP"}"#);
    let (ok, out, err) = exec(
        &f,
        &f.op.issue("alice"),
        &[],
        &read,
        &format!("cat {app}/config.yaml"),
    );
    assert!(ok && out.contains("Written-remotely"), "{out}\n{err}");
    assert_eq!(
        std::fs::read_to_string(f.app.join("config.yaml")).unwrap(),
        "local-config\n"
    );
}
