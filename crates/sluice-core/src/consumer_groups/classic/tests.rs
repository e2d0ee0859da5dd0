//! Classic members in consumer groups with simulated time: an upgrade
//! hands partitions over only after the classic member gave them up, its
//! commits are checked against its generation, a silent one is fenced, and
//! the last member of the new protocol leaving hands the group back.

use std::collections::BTreeSet;

use super::*;
use crate::consumer_groups::{ConsumerGroupSettings, Heartbeat, TopicId};

const ORDERS: TopicId = [1; 16];
const REBALANCE: Duration = Duration::from_secs(5);

fn catalog() -> TopicCatalog {
    let mut catalog = TopicCatalog::new();
    catalog.insert("orders", ORDERS, 4, false);
    catalog
}

fn groups() -> ConsumerGroups {
    ConsumerGroups::new(
        ConsumerGroupSettings {
            session_timeout: Duration::from_secs(10),
            ..ConsumerGroupSettings::default()
        },
        std::sync::Arc::default(),
    )
}

fn partitions(list: &[i32]) -> Assignment {
    Assignment::from([(ORDERS, list.iter().copied().collect::<BTreeSet<i32>>())])
}

fn owned(assignment: &Assignment) -> Vec<i32> {
    assignment
        .get(&ORDERS)
        .map(|ps| ps.iter().copied().collect())
        .unwrap_or_default()
}

fn protocols() -> Vec<(String, Bytes)> {
    vec![("cooperative-sticky".to_owned(), Bytes::from_static(&[0, 1]))]
}

fn classic_member(id: &str, assigned: Assignment) -> ClassicMember {
    ClassicMember {
        member_id: id.to_owned(),
        instance_id: None,
        client_id: id.to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: REBALANCE,
        protocols: protocols(),
        topics: vec!["orders".to_owned()],
        assigned,
    }
}

fn rejoin(id: &str, owning: Assignment) -> ClassicJoin {
    ClassicJoin {
        group_id: "g".to_owned(),
        member_id: id.to_owned(),
        instance_id: None,
        client_id: id.to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: REBALANCE,
        protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
        protocols: protocols(),
        topics: vec!["orders".to_owned()],
        owned: owning,
    }
}

fn join_new_protocol(id: &str) -> Heartbeat {
    Heartbeat {
        group_id: "g".to_owned(),
        member_id: id.to_owned(),
        member_epoch: 0,
        rebalance_timeout_ms: 5_000,
        subscribed_names: Some(vec!["orders".to_owned()]),
        subscribed_regex: Some(String::new()),
        owned: Some(Assignment::new()),
        ..Heartbeat::default()
    }
}

fn beat(id: &str, epoch: i32, owning: &Assignment) -> Heartbeat {
    Heartbeat {
        group_id: "g".to_owned(),
        member_id: id.to_owned(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        owned: Some(owning.clone()),
        ..Heartbeat::default()
    }
}

fn sync(
    groups: &ConsumerGroups,
    id: &str,
    generation: i32,
) -> Result<Assignment, ConsumerGroupError> {
    groups
        .classic_sync(
            "g",
            (id, None),
            generation,
            (Some("consumer"), Some("cooperative-sticky")),
            Instant::now(),
        )
        .map(|synced| synced.assignment)
}

/// A group upgraded from classic generation 3 with member "c" owning
/// every partition, then joined by "m" of the new protocol; "c" rejoins
/// twice, giving half up. Returns ("m"'s epoch, what "m" owns).
fn upgraded_and_split(
    groups: &ConsumerGroups,
    now: Instant,
) -> Result<(i32, Assignment), ConsumerGroupError> {
    groups.adopt_classic(
        "g",
        3,
        vec![classic_member("c", partitions(&[0, 1, 2, 3]))],
        &catalog(),
        now,
    )?;
    let joined = groups.heartbeat(join_new_protocol("m"), &catalog(), now)?;
    assert_eq!(
        joined.member_epoch, 4,
        "the join bumps the group epoch past the classic generation"
    );
    assert_eq!(
        joined.assignment.as_ref().map(owned),
        Some(vec![]),
        "everything is still held by c"
    );

    assert_eq!(
        groups.classic_heartbeat("g", ("c", None), 3, now),
        Err(ConsumerGroupError::RebalanceInProgress),
        "c must rejoin"
    );
    let first = groups.classic_join(rejoin("c", partitions(&[0, 1, 2, 3])), &catalog(), now)?;
    assert_eq!(first.generation, 3, "still revoking: its epoch waits");
    let kept = sync(groups, "c", 3)?;
    assert_eq!(owned(&kept).len(), 2, "c keeps half: {kept:?}");
    let waiting = groups.heartbeat(beat("m", 4, &Assignment::new()), &catalog(), now)?;
    assert!(
        waiting.assignment.is_none_or(|a| owned(&a).is_empty()),
        "m gets nothing before c gave it up"
    );

    let second = groups.classic_join(rejoin("c", kept.clone()), &catalog(), now)?;
    assert_eq!(second.generation, 4);
    assert_eq!(sync(groups, "c", 4)?, kept);
    assert_eq!(groups.classic_heartbeat("g", ("c", None), 4, now), Ok(()));
    let got = groups
        .heartbeat(beat("m", 4, &Assignment::new()), &catalog(), now)?
        .assignment
        .unwrap_or_default();
    let all: BTreeSet<i32> = owned(&kept).into_iter().chain(owned(&got)).collect();
    assert_eq!(
        (owned(&got).len(), all.len()),
        (2, 4),
        "m gets the other half: {got:?} beside {kept:?}"
    );
    Ok((4, got))
}

#[test]
fn an_upgraded_classic_member_gives_partitions_up_before_the_new_member_gets_them()
-> Result<(), ConsumerGroupError> {
    let groups = groups();
    upgraded_and_split(&groups, Instant::now())?;
    // Commits carry the classic member's generation, in any version.
    assert_eq!(
        groups.check_offset_commit("g", "c", 4, Some(2)),
        Some(Ok(()))
    );
    assert_eq!(
        groups.check_offset_commit("g", "c", 3, Some(2)),
        Some(Err(ConsumerGroupError::IllegalGeneration))
    );
    assert_eq!(
        groups.check_offset_commit("g", "m", 4, Some(8)),
        Some(Err(ConsumerGroupError::UnsupportedVersion)),
        "members of the new protocol still need OffsetCommit v9"
    );
    assert_eq!(
        sync(&groups, "c", 3),
        Err(ConsumerGroupError::IllegalGeneration)
    );
    assert_eq!(
        groups.classic_sync(
            "g",
            ("c", None),
            4,
            (Some("consumer"), Some("range")),
            Instant::now()
        ),
        Err(ConsumerGroupError::InconsistentGroupProtocol(
            "the protocol of member c's SyncGroup is not the one its JoinGroup was answered with"
                .to_owned()
        ))
    );
    assert_eq!(
        groups.classic_heartbeat("g", ("m", None), 4, Instant::now()),
        Err(ConsumerGroupError::UnknownMemberId),
        "a member of the new protocol has no classic heartbeat"
    );
    let described = groups.describe("g").map(|d| {
        d.members
            .iter()
            .map(|m| (m.member_id.clone(), m.classic))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        described,
        Some(vec![("c".to_owned(), true), ("m".to_owned(), false)])
    );
    Ok(())
}

/// The downgrades `groups` makes, as the classic coordinator would take
/// them (or refuse them, `accept` false).
fn downgrades(groups: &ConsumerGroups, accept: bool) -> Vec<(String, i32, Vec<ClassicMember>)> {
    let taken = std::sync::Mutex::new(Vec::new());
    groups.downgrade(|group, generation, members| {
        if !accept {
            return Err(members);
        }
        if let Ok(mut taken) = taken.lock() {
            taken.push((group.to_owned(), generation, members));
        }
        Ok(())
    });
    taken.into_inner().unwrap_or_default()
}

#[test]
fn the_last_member_of_the_new_protocol_leaving_hands_the_group_back()
-> Result<(), ConsumerGroupError> {
    let groups = groups();
    let now = Instant::now();
    let (epoch, _) = upgraded_and_split(&groups, now)?;
    assert!(downgrades(&groups, true).is_empty(), "m is still there");
    groups.heartbeat(
        Heartbeat {
            member_epoch: -1,
            ..beat("m", epoch, &Assignment::new())
        },
        &catalog(),
        now,
    )?;
    // Refused by the classic side (it has a group of the id): it stays.
    assert!(downgrades(&groups, false).is_empty());
    assert_eq!(groups.exists("g"), Some(true), "kept as a consumer group");
    groups.classic_leave("g", &[("c".to_owned(), None)]);
    groups.adopt_classic(
        "g",
        7,
        vec![classic_member("c", partitions(&[0, 1]))],
        &catalog(),
        now,
    )?;
    groups.heartbeat(join_new_protocol("m2"), &catalog(), now)?;
    groups.heartbeat(
        Heartbeat {
            member_epoch: -1,
            ..beat("m2", 8, &Assignment::new())
        },
        &catalog(),
        now,
    )?;
    let downgraded = downgrades(&groups, true);
    let [(group, generation, members)] = downgraded.as_slice() else {
        panic!("one group downgraded, got {downgraded:?}");
    };
    assert_eq!(
        (group.as_str(), *generation),
        ("g", 7),
        "at the epoch its member reached"
    );
    assert_eq!(
        members
            .iter()
            .map(|m| (m.member_id.as_str(), owned(&m.assigned)))
            .collect::<Vec<_>>(),
        vec![("c", vec![0, 1])],
        "what it owns goes with it"
    );
    assert_eq!(groups.exists("g"), None, "gone from the consumer groups");
    Ok(())
}

#[test]
fn a_static_classic_member_restarted_on_the_new_protocol_takes_its_own_place()
-> Result<(), ConsumerGroupError> {
    let groups = groups();
    let now = Instant::now();
    let mut member = classic_member("c", partitions(&[0, 1, 2, 3]));
    member.instance_id = Some("i1".to_owned());
    groups.adopt_classic("g", 3, vec![member], &catalog(), now)?;
    let answer = groups.heartbeat(
        Heartbeat {
            instance_id: Some("i1".to_owned()),
            ..join_new_protocol("c2")
        },
        &catalog(),
        now,
    )?;
    assert_eq!(
        answer.assignment.as_ref().map(owned),
        Some(vec![0, 1, 2, 3]),
        "no UNRELEASED_INSTANCE_ID: it replaces its classic self, assignment and all"
    );
    let described = groups.describe("g").map(|d| {
        d.members
            .iter()
            .map(|m| (m.member_id.clone(), m.classic))
            .collect::<Vec<_>>()
    });
    assert_eq!(described, Some(vec![("c2".to_owned(), false)]));
    Ok(())
}

#[test]
fn a_classic_member_told_to_rejoin_that_does_not_is_fenced_after_its_rebalance_timeout()
-> Result<(), ConsumerGroupError> {
    let groups = groups();
    let now = Instant::now();
    groups.adopt_classic(
        "g",
        3,
        vec![classic_member("c", partitions(&[0, 1, 2, 3]))],
        &catalog(),
        now,
    )?;
    groups.heartbeat(join_new_protocol("m"), &catalog(), now)?;
    assert_eq!(
        groups.classic_heartbeat("g", ("c", None), 3, now),
        Err(ConsumerGroupError::RebalanceInProgress)
    );
    // It keeps heartbeating but never rejoins.
    let later = now + REBALANCE - Duration::from_secs(1);
    assert_eq!(
        groups.classic_heartbeat("g", ("c", None), 3, later),
        Err(ConsumerGroupError::RebalanceInProgress)
    );
    assert_eq!(groups.expire(later), 0);
    assert_eq!(groups.expire(now + REBALANCE + Duration::from_secs(1)), 1);
    let answer = groups.heartbeat(
        beat("m", 4, &Assignment::new()),
        &catalog(),
        now + REBALANCE + Duration::from_secs(1),
    )?;
    assert_eq!(
        answer.assignment.as_ref().map(owned),
        Some(vec![0, 1, 2, 3]),
        "m gets what c held"
    );
    Ok(())
}

#[test]
fn a_classic_join_of_another_protocol_type_or_to_no_group_is_refused()
-> Result<(), ConsumerGroupError> {
    let groups = groups();
    let now = Instant::now();
    assert_eq!(
        groups.classic_join(rejoin("c", Assignment::new()), &catalog(), now),
        Err(ConsumerGroupError::UnknownMemberId),
        "no consumer group with members"
    );
    groups.heartbeat(join_new_protocol("m"), &catalog(), now)?;
    let connect = ClassicJoin {
        protocol_type: "connect".to_owned(),
        ..rejoin("w", Assignment::new())
    };
    assert!(matches!(
        groups.classic_join(connect, &catalog(), now),
        Err(ConsumerGroupError::InconsistentGroupProtocol(_))
    ));
    // A new classic member of the consumer protocol joins and is assigned.
    let joined = groups.classic_join(rejoin("c", Assignment::new()), &catalog(), now)?;
    assert_eq!(joined.protocol_name, "cooperative-sticky");
    assert_eq!(joined.generation, 2);
    Ok(())
}

#[test]
fn with_downgrades_off_a_group_left_with_classic_members_stays() -> Result<(), ConsumerGroupError> {
    let groups = ConsumerGroups::new(
        ConsumerGroupSettings {
            session_timeout: Duration::from_secs(10),
            migration: crate::consumer_groups::MigrationPolicy::Upgrade,
            ..ConsumerGroupSettings::default()
        },
        std::sync::Arc::default(),
    );
    let now = Instant::now();
    let (epoch, _) = upgraded_and_split(&groups, now)?;
    groups.heartbeat(
        Heartbeat {
            member_epoch: -1,
            ..beat("m", epoch, &Assignment::new())
        },
        &catalog(),
        now,
    )?;
    assert!(
        downgrades(&groups, true).is_empty(),
        "policy upgrade: no downgrade"
    );
    assert_eq!(groups.exists("g"), Some(true));
    Ok(())
}
