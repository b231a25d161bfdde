//! Finding a pod's network namespace from the node (the agent runs with `hostPID`) and
//! entering it.
//!
//! A pod's processes live in a cgroup whose path names the pod's UID: `.../pod<UID>/...`
//! with the cgroupfs driver, `...-pod<UID with _ for ->.slice/...` with systemd's. Every
//! process of the pod (the sandbox's pause process included) shares its network namespace,
//! so any of them will do.

use nix::sched::{setns, CloneFlags};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "no process of pod {uid} on this node (looked in {proc_dir}/*/cgroup): is the agent \
         on the pod's node, with hostPID?"
    )]
    NoProcess { uid: String, proc_dir: PathBuf },
    #[error(
        "no process of container {container_id} in pod {uid} on this node: has the container \
         restarted or stopped?"
    )]
    NoContainerProcess { uid: String, container_id: String },
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot enter the network namespace of pid {pid} (the agent needs CAP_SYS_ADMIN): {source}"
    )]
    Enter {
        pid: u32,
        #[source]
        source: nix::Error,
    },
}

/// Whether a `/proc/PID/cgroup` text places the process in pod `uid`.
pub fn in_pod(cgroup: &str, uid: &str) -> bool {
    let systemd = uid.replace('-', "_");
    cgroup.lines().any(|l| {
        l.contains(&format!("/pod{uid}/"))
            || l.ends_with(&format!("/pod{uid}"))
            || l.contains(&format!("-pod{systemd}.slice"))
    })
}

/// A process of pod `uid`, found under `proc_dir` (`/proc`).
pub fn pod_process(proc_dir: &Path, uid: &str) -> Result<u32, NetnsError> {
    let mut pids: Vec<u32> = std::fs::read_dir(proc_dir)
        .map_err(|source| NetnsError::Open {
            path: proc_dir.into(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The lowest pid is the pod's oldest process (its sandbox), which lives as long as the
    // pod does.
    pids.sort_unstable();
    pids.into_iter()
        .find(|pid| {
            std::fs::read_to_string(proc_dir.join(pid.to_string()).join("cgroup"))
                .is_ok_and(|c| in_pod(&c, uid))
        })
        .ok_or_else(|| NetnsError::NoProcess {
            uid: uid.into(),
            proc_dir: proc_dir.into(),
        })
}

/// The main process of container `container_id` (its runtime ID) of pod `uid`: the oldest
/// process in the container's cgroup (cgroupfs: `.../pod<UID>/<ID>`, systemd:
/// `...-pod<UID>.slice/cri-containerd-<ID>.scope`). Its environment is the container's as
/// the runtime made it (image, `env`, `envFrom`, Secrets), and its root holds the
/// `/etc/resolv.conf` and `/etc/hosts` the kubelet wrote for the pod.
pub fn container_process(
    proc_dir: &Path,
    uid: &str,
    container_id: &str,
) -> Result<u32, NetnsError> {
    let mut pids: Vec<u32> = std::fs::read_dir(proc_dir)
        .map_err(|source| NetnsError::Open {
            path: proc_dir.into(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let in_container = |cgroup: &str| {
        in_pod(cgroup, uid)
            && !container_id.is_empty()
            && cgroup.lines().any(|l| {
                l.ends_with(&format!("/{container_id}"))
                    || l.contains(&format!("/{container_id}/"))
                    || l.contains(&format!("-{container_id}.scope"))
            })
    };
    pids.into_iter()
        .find(|pid| {
            std::fs::read_to_string(proc_dir.join(pid.to_string()).join("cgroup"))
                .is_ok_and(|c| in_container(&c))
        })
        .ok_or_else(|| NetnsError::NoContainerProcess {
            uid: uid.into(),
            container_id: container_id.into(),
        })
}

/// Moves the calling thread into `pid`'s network namespace. Call before any other thread
/// exists: threads started later inherit it, threads started before do not.
pub fn enter(proc_dir: &Path, pid: u32) -> Result<(), NetnsError> {
    let path = proc_dir.join(pid.to_string()).join("ns").join("net");
    let file = std::fs::File::open(&path).map_err(|source| NetnsError::Open { path, source })?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { pid, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1c2a9e-6d2b-4c55-9a0e-1b2c3d4e5f60";

    #[test]
    fn both_cgroup_drivers_name_the_pod() {
        let cgroupfs = format!("0::/kubepods/besteffort/pod{UID}/0123456789abcdef\n");
        let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f1c2a9e_6d2b_4c55_9a0e_1b2c3d4e5f60.slice/cri-containerd-01.scope\n";
        let v1 = format!("12:pids:/kubepods/pod{UID}/abc\n11:cpu:/kubepods/pod{UID}/abc\n");
        assert!(in_pod(&cgroupfs, UID));
        assert!(in_pod(systemd, UID));
        assert!(in_pod(&v1, UID));
        assert!(!in_pod("0::/user.slice/session-1.scope\n", UID));
        assert!(
            !in_pod(&cgroupfs, "3f1c2a9e"),
            "a prefix of the uid is not the pod"
        );
    }

    #[test]
    fn the_pods_oldest_process_is_found() {
        let proc_dir = tempfile::tempdir().unwrap();
        let write = |pid: &str, cgroup: &str| {
            let d = proc_dir.path().join(pid);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("cgroup"), cgroup).unwrap();
        };
        write("1", "0::/init.scope\n");
        write("420", &format!("0::/kubepods/besteffort/pod{UID}/c2\n"));
        write("77", &format!("0::/kubepods/besteffort/pod{UID}/pause\n"));
        write("self", "0::/\n");
        write("421", &format!("0::/kubepods/besteffort/pod{UID}/c2\n"));
        assert_eq!(pod_process(proc_dir.path(), UID).unwrap(), 77);
        assert_eq!(
            container_process(proc_dir.path(), UID, "c2").unwrap(),
            420,
            "the container's own process, not the sandbox's"
        );
        assert!(
            container_process(proc_dir.path(), UID, "c").is_err(),
            "a prefix of the id is not the container"
        );
        assert!(container_process(proc_dir.path(), UID, "").is_err());
        let err = pod_process(proc_dir.path(), "nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hostPID"), "{err}");
    }
}
