//! Data rights on KwaaiNet, the parts a node and a page share:
//!
//! - [`export`]: the GDPR Art. 15/20 bundle, what a node hands a subject who asked for
//!   their data: the data itself, their signed consent records, their audit entries with
//!   inclusion proofs against a signed checkpoint, all under a manifest the node signs;
//!   [`export::verify`] checks every part of it offline, with no trust in the node beyond
//!   its key.
//! - [`export::ErasureReceipt`]: the node's signed statement of what an Art. 17 erasure did
//!   (keys shredded, blobs deleted, peers that confirmed with their own signed receipts).
//! - [`policy`]: the `gdpr`, `ccpa` and `hipaa` profiles and the policy a node enforces
//!   (consent, encryption, retention, regions, Global Privacy Control).

pub mod export;
pub mod policy;
