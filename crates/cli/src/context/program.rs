//! What the preload layer cannot cover, said before the process starts: a statically
//! linked program never loads it, and Go makes its own system calls for connections (and,
//! by default, its own DNS). Both still get the target's environment.
//!
//! A script is judged by its interpreter (`#!/usr/bin/env python3` → python3).

use object::Object;
use std::path::{Path, PathBuf};

/// Why the layer will not see `program`'s connections, if it will not.
pub fn uncovered(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<String> {
    let path = locate(program, path_var)?;
    let path = match interpreter(&path) {
        Some(interp) => locate(&interp, path_var).unwrap_or(path),
        None => path,
    };
    let data = std::fs::read(&path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if file.format() != object::BinaryFormat::Elf {
        return None;
    }
    let shown = path.display();
    if file.section_by_name(".go.buildinfo").is_some() {
        return Some(format!(
            "{shown} is a Go program: Go opens connections with its own system calls, which the \
             layer does not see, so its outgoing connections (and, unless built to use the C \
             resolver, its DNS) stay on this machine; it still gets the target's environment"
        ));
    }
    // Static and static-pie programs alike have no interpreter to load the layer.
    if file.section_by_name(".interp").is_none() {
        return Some(format!(
            "{shown} is statically linked: the layer cannot load into it, so its outgoing \
             connections and DNS stay on this machine; it still gets the target's environment"
        ));
    }
    None
}

/// `program` as `execvp` would find it.
pub fn locate(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The interpreter of a `#!` script (through `env`).
fn interpreter(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if first.ends_with("/env") {
        return words.find(|w| !w.starts_with('-')).map(str::to_owned);
    }
    Some(first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_is_covered() {
        let path = std::env::var_os("PATH");
        assert_eq!(uncovered("sh", path.as_deref()), None);
    }

    #[test]
    fn a_static_program_is_named() {
        // ldconfig is static-pie on glibc systems (Debian's libc-bin, always installed).
        let w = uncovered("/sbin/ldconfig", None).expect("ldconfig is static");
        assert!(w.contains("statically linked"), "{w}");
    }

    #[test]
    fn a_script_is_judged_by_its_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run");
        std::fs::write(&script, "#!/usr/bin/env -S sh -e\necho hi\n").unwrap();
        assert_eq!(interpreter(&script).as_deref(), Some("sh"));
        std::fs::write(&script, "#!/bin/bash\n").unwrap();
        assert_eq!(interpreter(&script).as_deref(), Some("/bin/bash"));
        std::fs::write(&script, "echo no shebang\n").unwrap();
        assert_eq!(interpreter(&script), None);
    }

    #[test]
    fn unknown_programs_are_left_to_exec() {
        assert_eq!(uncovered("/nonexistent/prog", None), None);
        assert_eq!(
            uncovered("no-such-program-here", Some("/nonexistent".as_ref())),
            None
        );
    }
}
