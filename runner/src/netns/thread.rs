//! Namespace switches confined to short-lived OS threads.
//!
//! unshare(CLONE_NEWNET) and setns() change the network namespace of the calling *thread*. Done on a
//! tokio worker or blocking-pool thread, that would leave the thread in the wrong namespace for
//! whatever runs there next. So every switch happens on a fresh `std::thread` that ends right after
//! its job. What the job creates inside the namespace (the namespace's fd, a netlink socket, a TCP
//! listener) stays bound to that namespace and works from any thread.

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::sched::{setns, unshare, CloneFlags};
use tokio::task::JoinHandle;

use super::{NetError, Step};

/// An rtnetlink connection bound to one namespace: the handle, and the task that drives the socket.
///
/// The socket holds a reference to its namespace, so the namespace lives at least until
/// [`Netlink::close`] (or until the handle and all its clones are dropped and the task notices).
pub(crate) struct Netlink {
    pub(crate) handle: rtnetlink::Handle,
    task: JoinHandle<()>,
}

impl Netlink {
    /// Drops the handle and waits until the connection task has closed the socket.
    pub(crate) async fn close(self) {
        drop(self.handle);
        // The task only ends; a JoinError would mean it panicked or was aborted, and either way the
        // socket is gone.
        let _ = self.task.await;
    }

    /// Gives up the handle; the connection task ends when the last clone of it is dropped.
    pub(crate) fn into_handle(self) -> rtnetlink::Handle {
        self.handle
    }
}

/// Creates an anonymous network namespace, returning its fd and a netlink connection inside it.
///
/// The namespace exists as long as the fd, a socket inside it, or a process in it does.
pub(crate) async fn create_netns(instance: Option<u32>) -> Result<(OwnedFd, Netlink), NetError> {
    let runtime = tokio::runtime::Handle::current();
    let job = move || -> Result<(OwnedFd, Netlink), NetError> {
        let fail = |step, e: io::Error| NetError::at(step, instance, e);
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| fail(Step::CreateNamespace, e.into()))?;
        let netns = File::open("/proc/thread-self/ns/net").map_err(|e| fail(Step::CreateNamespace, e))?;
        disable_ipv6_on_new_interfaces();
        let netlink = connect(&runtime).map_err(|e| fail(Step::OpenNetlink, e))?;
        Ok((OwnedFd::from(netns), netlink))
    };
    on_helper_thread(job).await.map_err(|e| NetError::at(Step::CreateNamespace, instance, e))?
}

/// Makes interfaces created later in the calling thread's (fresh) namespace come up without IPv6;
/// `lo`, which already exists, keeps `::1`.
///
/// This is about scale as much as about matching Docker (which disables IPv6 on networks not set up
/// for it): an interface with IPv6 sends router solicitations, MLD reports and DAD probes when it
/// comes up, and a bridge floods each of them to every port, into every instance's stack. With a
/// few hundred instances that made setup quadratic (measured: 3 ms per instance at 100, 27 ms at
/// 500, 45 ms at 1100; about 3 to 8 ms flat without IPv6). Best effort: without IPv6 support or with
/// a read-only /proc/sys, the namespace stays usable and setup is only slower.
fn disable_ipv6_on_new_interfaces() {
    // /proc/sys/net resolves to the network namespace of the thread that opens the file.
    let path = "/proc/sys/net/ipv6/conf/default/disable_ipv6";
    if let Err(e) = std::fs::write(path, "1") {
        tracing::debug!("cannot write {path}: {e}; interfaces will get IPv6 addresses");
    }
}

/// Opens a netlink connection inside an existing namespace.
pub(crate) async fn open_netlink(netns: BorrowedFd<'_>, instance: Option<u32>) -> Result<Netlink, NetError> {
    let runtime = tokio::runtime::Handle::current();
    // The helper thread outlives this borrow in the type system's eyes, so it gets its own fd.
    let netns = netns.try_clone_to_owned().map_err(|e| NetError::at(Step::EnterNamespace, instance, e))?;
    let job = move || -> Result<Netlink, NetError> {
        setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::at(Step::EnterNamespace, instance, e.into()))?;
        connect(&runtime).map_err(|e| NetError::at(Step::OpenNetlink, instance, e))
    };
    on_helper_thread(job).await.map_err(|e| NetError::at(Step::EnterNamespace, instance, e))?
}

/// Runs `job` inside `netns` on a scoped helper thread and waits for it (blocking the caller for
/// the time of a thread spawn, tens of microseconds).
pub(crate) fn run_in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    job: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new().name("tg-netns".into()).spawn_scoped(scope, move || {
            setns(netns, CloneFlags::CLONE_NEWNET)?;
            job()
        })?;
        thread.join().unwrap_or_else(|_| Err(io::Error::other("namespace helper thread panicked")))
    })
}

/// Opens an rtnetlink socket in the calling thread's namespace and spawns its connection task on
/// `runtime` (the socket registers with that runtime's reactor, not with this thread).
fn connect(runtime: &tokio::runtime::Handle) -> io::Result<Netlink> {
    let _entered = runtime.enter();
    let (connection, handle, _unsolicited) = rtnetlink::new_connection()?;
    // Dropping `_unsolicited` is deliberate: with no receiver and no handle left, the task ends.
    let task = runtime.spawn(connection);
    Ok(Netlink { handle, task })
}

/// Runs `job` on a new OS thread that ends with it; the caller awaits the result without blocking
/// the runtime.
async fn on_helper_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("tg-netns".into()).spawn(move || {
        let _ = tx.send(job());
    })?;
    rx.await.map_err(|_| io::Error::other("namespace helper thread panicked"))
}
