//! fleet-serenity: runs a fleet cluster's shards with serenity.
//!
//! # Theory of operation
//!
//! The adapter gives carrier what it needs from serenity: shards started for a cluster's range
//! under carrier's identify queue, an HTTP client pointed at the configured REST base, cache
//! lookups for cross-cluster fetches. It currently holds no public items.
