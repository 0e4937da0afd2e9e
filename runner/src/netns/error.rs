//! What can go wrong while building a run's networks, with the step, the instance and the
//! kernel's errno kept as data so the CLI can render a headline and a hint.

use std::fmt;
use std::io;

use super::Ipv4Cidr;

/// A failure while creating or configuring the hub or an instance's namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The kernel said EPERM or EACCES: the caller lacks the privileges namespaces need.
    #[error(
        "{step}{}: permission denied; isolating instances in network namespaces needs root \
         (CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        Instance(*instance)
    )]
    PermissionDenied {
        step: Step,
        instance: Option<u32>,
        #[source]
        source: io::Error,
    },
    /// Any other refusal by the kernel, or a netlink connection that failed.
    #[error("{step}{}: {source}", Instance(*instance))]
    Kernel {
        step: Step,
        instance: Option<u32>,
        #[source]
        source: io::Error,
    },
    /// The instance's host number does not fit in a network.
    #[error("instance {index} needs host number {host}, which does not fit in {subnet}")]
    SubnetExhausted { subnet: Ipv4Cidr, index: u32, host: u32 },
    /// The data subnet would share addresses with the control network.
    #[error("the data subnet {data} overlaps the control network {control}; choose another TEST_SUBNET")]
    SubnetOverlap { data: Ipv4Cidr, control: Ipv4Cidr },
    /// More instances than the hub's bridges can hold.
    #[error("instance {index} is beyond the limit of {max} instances per run")]
    TooManyInstances { index: u32, max: u32 },
}

impl NetError {
    /// Wraps an OS or netlink error from `step`, telling permission problems apart.
    pub(crate) fn at(step: Step, instance: Option<u32>, source: io::Error) -> NetError {
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => NetError::PermissionDenied { step, instance, source },
            _ => NetError::Kernel { step, instance, source },
        }
    }

    /// The kernel's errno, if the failure came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::PermissionDenied { source, .. } | NetError::Kernel { source, .. } => source.raw_os_error(),
            NetError::SubnetExhausted { .. } | NetError::SubnetOverlap { .. } | NetError::TooManyInstances { .. } => {
                None
            }
        }
    }

    /// The step that failed, if the failure came from a step.
    pub fn step(&self) -> Option<&Step> {
        match self {
            NetError::PermissionDenied { step, .. } | NetError::Kernel { step, .. } => Some(step),
            NetError::SubnetExhausted { .. } | NetError::SubnetOverlap { .. } | NetError::TooManyInstances { .. } => {
                None
            }
        }
    }
}

/// Turns an rtnetlink error into an `io::Error` that keeps the kernel's errno when there is one.
pub(crate) fn netlink_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) if msg.code.is_some() => msg.to_io(),
        // `RequestFailed` means the connection task is gone; rtnetlink loses the cause.
        other => io::Error::other(other),
    }
}

/// One step of building the networks; each names the object it works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// unshare(CLONE_NEWNET) on a helper thread, and opening the namespace's fd.
    CreateNamespace,
    /// setns() into an existing namespace.
    EnterNamespace,
    /// Opening an rtnetlink socket inside a namespace.
    OpenNetlink,
    AddBridge {
        name: String,
    },
    /// A veth pair: `name` in the hub, `peer` in the instance (or hub) namespace.
    AddVeth {
        name: String,
        peer: String,
    },
    FindLink {
        name: String,
    },
    SetUp {
        link: String,
    },
    AttachToBridge {
        link: String,
        bridge: String,
    },
    AddAddress {
        link: String,
        address: String,
    },
    AddNeighbour {
        link: String,
        address: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateNamespace => f.write_str("creating a network namespace"),
            Step::EnterNamespace => f.write_str("entering a network namespace"),
            Step::OpenNetlink => f.write_str("opening a netlink socket"),
            Step::AddBridge { name } => write!(f, "adding bridge {name}"),
            Step::AddVeth { name, peer } => write!(f, "adding veth pair {name} <-> {peer}"),
            Step::FindLink { name } => write!(f, "looking up interface {name}"),
            Step::SetUp { link } => write!(f, "bringing {link} up"),
            Step::AttachToBridge { link, bridge } => write!(f, "attaching {link} to bridge {bridge}"),
            Step::AddAddress { link, address } => write!(f, "adding address {address} to {link}"),
            Step::AddNeighbour { link, address } => {
                write!(f, "adding a static neighbour entry for {address} on {link}")
            }
        }
    }
}

/// Renders " (instance N)" or nothing.
struct Instance(Option<u32>);

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, " (instance {i})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_becomes_a_permission_message() {
        let e = NetError::at(Step::CreateNamespace, None, io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, NetError::PermissionDenied { .. }));
        assert_eq!(e.errno(), Some(libc::EPERM));
        assert_eq!(
            e.to_string(),
            "creating a network namespace: permission denied; isolating instances in network \
             namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        );
    }

    #[test]
    fn other_errors_keep_step_instance_and_errno() {
        let step = Step::AddVeth { name: "c7".into(), peer: "eth0".into() };
        let e = NetError::at(step.clone(), Some(7), io::Error::from_raw_os_error(libc::EEXIST));
        assert_eq!(e.step(), Some(&step));
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().starts_with("adding veth pair c7 <-> eth0 (instance 7): File exists"), "{e}");
    }

    #[test]
    fn netlink_errors_keep_the_errno() {
        let mut msg = rtnetlink::packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-libc::ENOENT);
        assert_eq!(netlink_io(rtnetlink::Error::NetlinkError(msg)).raw_os_error(), Some(libc::ENOENT));
        assert_eq!(netlink_io(rtnetlink::Error::RequestFailed).raw_os_error(), None);
    }
}
