//! Hivemind's patterns on KwaaiNet, in Rust, with no daemon.
//!
//! - [`allreduce`]: decentralized averaging, one round of butterfly all-reduce in a group:
//!   parts by share, compressed ([`kwaainet_core::codec`]: `f32`, `f16`, `blockwise8`),
//!   weighted by samples, stragglers dropped on timeout, no master.
//! - [`partition`]: which part each member reduces.
//! - [`frame`]: the frames of `/kwaainet/averaging/1.0.0`, checked before they are read.
//! - [`local`]: a transport between members in one process.
//! - `train` (feature `train`, default): training on burn with autodiff, the digits data,
//!   parameters as one vector for averaging.
//! - `net` (native): the protocol over libp2p streams, members authenticated by their
//!   peer ids; a joining peer downloads the current state from a member.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kwaainet_core::codec::Codec;
//! use kwaainet_hivemind::{all_reduce, local, Group, Options};
//!
//! let mut links = local::group(2);
//! let mut b = links.pop().ok_or("no member")?;
//! let mut a = links.pop().ok_or("no member")?;
//! let group = |me| Group { key: [1; 16], shares: vec![1, 1], me };
//! let opts = Options::new(Codec::F32);
//! let (mut x, mut y) = (vec![1.0f32, 2.0, 3.0], vec![3.0f32, 4.0, 5.0]);
//! let sleep = |d| tokio::time::sleep(d);
//! let (ga, gb) = (group(0), group(1));
//! let (ra, rb) = tokio::join!(
//!     all_reduce(&ga, &opts, &mut x, &mut a, sleep),
//!     all_reduce(&gb, &opts, &mut y, &mut b, sleep),
//! );
//! assert!(ra?.complete(2) && rb?.complete(2));
//! assert_eq!(x, [2.0, 3.0, 4.0]);
//! assert_eq!(x, y);
//! # Ok(())
//! # }
//! ```

pub mod allreduce;
pub mod frame;
pub mod local;
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub mod net;
pub mod partition;
#[cfg(feature = "train")]
pub mod train;

pub use allreduce::{AvgError, Group, Options, Report, Transport, all_reduce};
