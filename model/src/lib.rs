//! What a test is, in Testground's terms: a plan's `manifest.toml` ([`Manifest`]), a composition
//! ([`Composition`], or [`Composition::single`] from command-line flags), the same composition
//! checked against the manifest with every precedence rule applied ([`Prepared`]: build units for
//! the builders, runs and run groups for the runners), test params and their packing
//! ([`pack_params`]), the run environment contract ([`InstanceEnv`]), and the events instances
//! report ([`Event`]). The Testground compatibility reference (`reference/testground-compat.md`,
//! §1, §2.5, §4 and §5.1) is the specification; doc comments quote it where the behaviour is
//! surprising.
//!
//! A composition that contains `{{` is a handlebars template, rendered before parsing
//! ([`render_composition`], data in [`TemplateData`]: the environment and `--set` variables).
//!
//! This crate does no I/O besides reading the one file [`Manifest::load`] or
//! [`Composition::load`] is given (and the TOML resources a composition template loads from its
//! own directory), starts no processes and opens no sockets. Every problem is a
//! [`ModelError`] that names the file, the key path, the line and the fix; things tg-nix accepts
//! but wants seen are [`Warning`]s. No input makes it panic.
//!
//! ```
//! use std::path::Path;
//! use tg_nix_model::{Composition, Manifest};
//!
//! let manifest = Manifest::from_str(r#"
//!     name = "ping"
//!     [builders."exec:rust"]
//!     [runners."local:exec"]
//!     [[testcases]]
//!     name = "ping"
//!     instances = { min = 2, max = 10 }
//!     params = { iterations = { type = "int", default = 5 } }
//! "#, Path::new("manifest.toml"))?;
//!
//! let composition = Composition::from_str(r#"
//!     [global]
//!     plan = "ping"
//!     case = "ping"
//!     builder = "exec:rust"
//!     runner = "local:exec"
//!     [[groups]]
//!     id = "alpha"
//!     instances = { count = 2 }
//!     [groups.run.test_params]
//!     iterations = "3"
//! "#, Path::new("ping.toml"))?;
//!
//! let prepared = composition.prepare(&manifest)?;
//! assert_eq!(prepared.runs[0].id, "default");
//! assert_eq!(prepared.runs[0].groups[0].test_params["iterations"], "3");
//!
//! let err = Composition::from_str("[[groups]]\nid = \"a\"\ninstnaces = 2\n", Path::new("c.toml")).unwrap_err();
//! assert_eq!(err.to_string(), "c.toml:3: groups[0].instnaces: unknown key `instnaces` in [[groups]]\n(hint: did you mean `instances`?)");
//! # Ok::<(), tg_nix_model::ModelError>(())
//! ```

mod composition;
mod doc;
mod env;
mod error;
mod events;
mod manifest;
mod params;
mod prepare;
mod single;
mod template;

pub use composition::{Build, Composition, Dependency, Global, Group, Instances, Run, RunDefaults, RunGroupDef};
pub use env::{InstanceEnv, RS_REQUIRED_VARS};
pub use error::{ErrorKind, ModelError, Warning};
pub use events::Event;
pub use manifest::{InstanceBounds, Manifest, ParamSpec, TestCase};
pub use params::{check_param, pack_params, param_default_string, unpack_params, ParamProblem};
pub use prepare::{BuildUnit, Prepared, RunGroup, RunSpec, MAX_INSTANCES};
pub use single::{SingleRun, SINGLE_GROUP};
pub use template::{is_template, render_composition, TemplateData};

#[cfg(test)]
mod hostile_tests;
