//! fleet-twilight: runs a fleet cluster's shards with twilight-gateway.
//!
//! # Theory of operation
//!
//! The adapter gives carrier what it needs from twilight: shards started for a cluster's range
//! with carrier's identify queue (twilight's `Queue` trait), an HTTP client pointed at the
//! configured REST base, cache lookups for cross-cluster fetches, and session handover for
//! resumable restarts. It currently holds no public items.
