//! Where `libmirrord_layer.so` is: `MIRRORD_LAYER_FILE` if set, else beside `mirrordctl`
//! (a build tree, a tarball), else `../lib/mirrord/` from it (a package's layout).

use std::path::PathBuf;

pub const ENV_FILE: &str = "MIRRORD_LAYER_FILE";
const NAME: &str = "libmirrord_layer.so";

pub fn find() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_FILE).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "{ENV_FILE}={} is not a file: point it at {NAME}",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [dir.join(NAME), dir.join("../lib/mirrord").join(NAME)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    anyhow::bail!(
        "cannot find {NAME} (looked in {} and {}): the process's outgoing connections and \
         names would stay on this machine. Install it beside mirrordctl, set {ENV_FILE}, or \
         pass --no-outgoing --no-remote-dns",
        candidates[0].display(),
        candidates[1].display()
    )
}
