//! Moving a child process into its instance's namespaces between fork and exec.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::Arc;

/// Installs a `pre_exec` hook on `cmd` that puts the child in `netns`, in new mount and UTS
/// namespaces with `hosts_file` bind-mounted over /etc/hosts and `hostname` set, in its own process
/// group, and killed by the kernel if its parent goes away.
///
/// The hook keeps `netns` alive for as long as `cmd` exists, so the fd it joins is always valid.
/// A hostname or path containing a NUL byte makes the spawn fail with EINVAL.
pub(crate) fn configure(cmd: &mut tokio::process::Command, netns: Arc<OwnedFd>, hostname: &str, hosts_file: &Path) {
    // Everything the child needs is prepared here: it must not allocate after fork.
    let hostname = CString::new(hostname).ok();
    // Relative paths would resolve against the child's working directory; pin them now.
    let hosts_file = std::path::absolute(hosts_file).unwrap_or_else(|_| hosts_file.to_path_buf());
    let hosts_file = CString::new(hosts_file.as_os_str().as_bytes()).ok();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the forked child, where only async-signal-safe functions may be
    // called. `enter_instance` makes plain syscalls through libc on data prepared above, and builds
    // errors with `io::Error::from_raw_os_error`/`last_os_error`, which do not allocate.
    unsafe {
        cmd.pre_exec(move || enter_instance(&netns, hostname.as_deref(), hosts_file.as_deref(), parent));
    }
}

/// The child's side of [`configure`]. Runs after fork, before exec.
fn enter_instance(
    netns: &OwnedFd,
    hostname: Option<&CStr>,
    hosts_file: Option<&CStr>,
    parent: libc::pid_t,
) -> io::Result<()> {
    let (Some(hostname), Some(hosts_file)) = (hostname, hosts_file) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY (all blocks below): direct syscalls with valid, NUL-terminated strings that outlive
    // the call, and an fd that `netns` keeps open.
    check(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) })?;
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) })?;
    // A new mount namespace starts as a copy that still shares propagation with the host's; make
    // every mount private first, so the bind mount below never shows up outside this child.
    check(unsafe {
        libc::mount(ptr::null(), c"/".as_ptr(), ptr::null(), libc::MS_REC | libc::MS_PRIVATE, ptr::null())
    })?;
    check(unsafe {
        libc::mount(hosts_file.as_ptr(), c"/etc/hosts".as_ptr(), ptr::null(), libc::MS_BIND, ptr::null())
    })?;
    check(unsafe { libc::sethostname(hostname.as_ptr(), hostname.to_bytes().len()) })?;
    // PR_SET_PDEATHSIG fires when the *thread* that forked this child exits, not the process. The
    // spawn happens on whichever thread polls `Command::spawn`: a tokio worker (alive as long as
    // the runtime) or the current-thread runtime's own thread. Spawning from `spawn_blocking` would
    // be wrong: idle blocking-pool threads exit after a few seconds and would kill the instance.
    // What this buys: if tg-nix is killed (even with SIGKILL), its instances die with it, their
    // namespaces lose their last users and vanish with every interface in them.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })?;
    // The parent may have died before the prctl took effect; then no signal will ever come.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // Its own process group, so the runner can signal everything the instance starts at once.
    check(unsafe { libc::setpgid(0, 0) })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
