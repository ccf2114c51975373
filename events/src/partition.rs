//! Partitioning by user: which service instance owns a user's accounts and sagas.
//!
//! With `FX_PARTITIONS=N` (N > 1) the `FX` stream stores every event under
//! `fx.<domain>.<event>.<user_id>.<p>`, where `p` is the user's partition: the stream's subject
//! transform `fx.*.*.* -> fx.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{partition(N,3)}}`
//! computes it on the broker as the message is stored. Publishers keep using the contract
//! subject `fx.<domain>.<event>.<user_id>`; instance `k` of each service consumes only
//! `fx.<domain>.<event>.*.<k>`. [`partition_of`] is the same function in Rust (FNV-1a, 32 bit,
//! of the user id's bytes, modulo N), for the places that route without the broker: fxctl's
//! admin requests and each instance's check that a user is its own.
//!
//! Every event of a saga carries the saga's user in its subject, so one saga's events stay in
//! one partition, in order.

use std::fmt;

use crate::{EventKind, UserId, SUBJECT_PREFIX};

/// Most partitions a deployment may have. `config/nats.conf` grants consumer names for this
/// many (`fx-<service>-p0` … `fx-<service>-p7`).
pub const MAX_PARTITIONS: u32 = 8;

/// The partition (0-based) of `user` among `partitions`: FNV-1a 32-bit of the id's bytes,
/// modulo `partitions` — nats-server's `{{partition(N, k)}}` over one token.
pub fn partition_of(user: &UserId, partitions: u32) -> u32 {
    crate::fnv::fnv1a_32(user.as_str().bytes()) % partitions.max(1)
}

/// Why a partitioning setting is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PartitionError(String);

/// One instance's place among the partitions: instance `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Partitioning {
    count: u32,
    index: u32,
}

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning::SINGLE
    }
}

impl Partitioning {
    /// One instance owns every user (the default): subjects are stored as published.
    pub const SINGLE: Partitioning = Partitioning { count: 1, index: 0 };

    /// Instance `index` (0-based) of `count`; refuses `count` outside 1..=[`MAX_PARTITIONS`]
    /// and `index >= count`.
    pub fn new(count: u32, index: u32) -> Result<Partitioning, PartitionError> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(PartitionError(format!(
                "FX_PARTITIONS={count} is out of range: use 1 to {MAX_PARTITIONS}"
            )));
        }
        if index >= count {
            return Err(PartitionError(format!(
                "FX_PARTITION={index} is out of range: with FX_PARTITIONS={count} it is 0 to {}",
                count - 1
            )));
        }
        Ok(Partitioning { count, index })
    }

    /// How many partitions there are.
    pub fn count(self) -> u32 {
        self.count
    }

    /// This instance's partition.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Whether there is more than one partition (the stream then rewrites subjects).
    pub fn is_partitioned(self) -> bool {
        self.count > 1
    }

    /// Whether this instance owns `user`.
    pub fn owns(self, user: &UserId) -> bool {
        partition_of(user, self.count) == self.index
    }

    /// The consumer filter for one kind in this instance's partition: `fx.<domain>.<event>.*`
    /// unpartitioned, `fx.<domain>.<event>.*.<k>` partitioned.
    pub fn filter(self, kind: EventKind) -> String {
        if self.is_partitioned() {
            format!("{}.{}", kind.filter(), self.index)
        } else {
            kind.filter()
        }
    }

    /// This instance's name, as its durable consumer `fx-<name>` uses it: `krw` unpartitioned,
    /// `krw-p1` for partition 1.
    pub fn instance_name(self, service: &str) -> String {
        if self.is_partitioned() {
            format!("{service}-p{}", self.index)
        } else {
            service.to_owned()
        }
    }

    /// The admin subject group of this instance: `fxadmin.<service>` unpartitioned,
    /// `fxadmin.<service>.p<k>` partitioned (so one grant, `fxadmin.<service>.>`, covers all).
    pub fn admin_group(self, prefix: &str, service: &str) -> String {
        if self.is_partitioned() {
            format!("{prefix}.{service}.p{}", self.index)
        } else {
            format!("{prefix}.{service}")
        }
    }
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} of {}", self.index, self.count)
    }
}

/// The `FX` stream's subject transform for `count` partitions, as `(source, destination)`;
/// `None` for one partition (subjects are stored as published).
pub fn stream_transform(count: u32) -> Option<(String, String)> {
    (count > 1).then(|| {
        (
            format!("{SUBJECT_PREFIX}.*.*.*"),
            format!(
                "{SUBJECT_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{partition({count},3)}}}}"
            ),
        )
    })
}

/// The partition count a stream transform destination encodes (the inverse of
/// [`stream_transform`]): `Some(1)` for no transform, `None` for a transform this system did not
/// write.
pub fn partitions_of_transform(destination: Option<&str>) -> Option<u32> {
    let Some(dest) = destination.filter(|d| !d.is_empty()) else {
        return Some(1);
    };
    let count: u32 = dest
        .rsplit_once("{{partition(")?
        .1
        .strip_suffix(",3)}}")?
        .parse()
        .ok()?;
    (stream_transform(count)?.1 == dest).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_partition_is_fnv1a_32_of_the_user_modulo_the_count() {
        assert_eq!(partition_of(&uid("a"), 1), 0);
        assert_eq!(partition_of(&uid("a"), 7), 0xe40c_292c % 7);
    }

    #[test]
    fn every_user_has_exactly_one_owner() {
        for n in 1..=MAX_PARTITIONS {
            for i in 0..200 {
                let user = uid(&format!("user-{i}"));
                let owners = (0..n)
                    .filter(|&k| Partitioning::new(n, k).unwrap().owns(&user))
                    .count();
                assert_eq!(owners, 1, "{user} among {n}");
            }
        }
    }

    #[test]
    fn settings_out_of_range_are_refused_with_the_range() {
        assert!(Partitioning::new(0, 0)
            .unwrap_err()
            .to_string()
            .contains("1 to 8"));
        assert!(Partitioning::new(9, 0).is_err());
        assert!(Partitioning::new(2, 2)
            .unwrap_err()
            .to_string()
            .contains("0 to 1"));
        assert_eq!(Partitioning::new(1, 0).unwrap(), Partitioning::SINGLE);
    }

    #[test]
    fn filters_and_names_follow_the_partition() {
        let p = Partitioning::new(2, 1).unwrap();
        assert_eq!(p.filter(EventKind::KrwHeld), "fx.krw.held.*.1");
        assert_eq!(p.instance_name("krw"), "krw-p1");
        assert_eq!(p.admin_group("fxadmin", "krw"), "fxadmin.krw.p1");
        assert_eq!(
            Partitioning::SINGLE.admin_group("fxadmin", "krw"),
            "fxadmin.krw"
        );
        assert_eq!(
            Partitioning::SINGLE.filter(EventKind::KrwHeld),
            "fx.krw.held.*"
        );
        assert_eq!(Partitioning::SINGLE.instance_name("krw"), "krw");
    }

    #[test]
    fn the_transform_round_trips_its_count() {
        assert_eq!(stream_transform(1), None);
        let (src, dest) = stream_transform(4).unwrap();
        assert_eq!(src, "fx.*.*.*");
        assert_eq!(
            dest,
            "fx.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{partition(4,3)}}"
        );
        assert_eq!(partitions_of_transform(Some(&dest)), Some(4));
        assert_eq!(partitions_of_transform(None), Some(1));
        assert_eq!(partitions_of_transform(Some("")), Some(1));
        assert_eq!(partitions_of_transform(Some("other.{{wildcard(1)}}")), None);
    }
}
