//! The share-partition state machine and share group membership with
//! simulated time: acquisition, each acknowledgement type, lock expiry,
//! the delivery limit, members splitting one partition, sessions.

use super::*;

const T: TopicId = [7; 16];

fn settings() -> ShareSettings {
    ShareSettings {
        lock_duration: Duration::from_secs(30),
        delivery_limit: 3,
        max_record_locks: 10,
        ..ShareSettings::default()
    }
}

fn ack(first: i64, last: i64, kind: AckType) -> AckBatch {
    AckBatch {
        first,
        last,
        types: vec![kind],
    }
}

#[test]
fn two_members_split_a_partition_and_never_hold_the_same_record() {
    let settings = settings();
    let now = Instant::now();
    let mut state = SharePartition::new(0);
    let a = state.acquire("a", 0..100, 4, &settings, now);
    let b = state.acquire("b", 0..100, 4, &settings, now);
    assert_eq!(
        a,
        vec![Acquired {
            first: 0,
            last: 3,
            delivery_count: 1
        }]
    );
    assert_eq!(
        b,
        vec![Acquired {
            first: 4,
            last: 7,
            delivery_count: 1
        }]
    );
    // The cap on records in flight (10) stops the third member at 2.
    let c = state.acquire("c", 0..100, 4, &settings, now);
    assert_eq!(c.iter().map(|r| r.last - r.first + 1).sum::<i64>(), 2);
    assert_eq!(state.wanted_from(100, settings.max_record_locks), None);
    // b may not acknowledge a's records: nothing changes.
    assert_eq!(
        state.acknowledge("b", &[ack(0, 3, AckType::Accept)], 3),
        Err(ShareError::InvalidRecordState)
    );
    state
        .acknowledge("a", &[ack(0, 3, AckType::Accept)], 3)
        .expect("a's own");
    assert_eq!(state.start(), 4, "the start moves past what is done");
}

#[test]
fn released_and_expired_records_come_back_with_a_higher_count_until_archived() {
    let settings = settings();
    let now = Instant::now();
    let mut state = SharePartition::new(0);
    state.acquire("a", 0..1, 10, &settings, now);
    assert!(
        state
            .acknowledge("a", &[ack(0, 0, AckType::Release)], 3)
            .expect("release")
    );
    let second = state.acquire("b", 0..1, 10, &settings, now);
    assert_eq!(second[0].delivery_count, 2);
    // b's lock runs out: available again, delivered a third time.
    assert!(!state.expire(now + Duration::from_secs(29), 3));
    assert!(state.expire(now + Duration::from_secs(30), 3));
    let third = state.acquire("c", 0..1, 10, &settings, now + Duration::from_secs(31));
    assert_eq!(third[0].delivery_count, 3);
    // The third release reaches the limit: archived, never redelivered.
    assert!(
        !state
            .acknowledge("c", &[ack(0, 0, AckType::Release)], 3)
            .expect("release")
    );
    assert_eq!(state.counts().archived, 1);
    assert_eq!(state.start(), 1);
    assert!(
        state
            .acquire("a", 0..1, 10, &settings, now + Duration::from_secs(32))
            .is_empty()
    );
}

#[test]
fn reject_and_gap_archive_and_per_offset_types_apply_one_by_one() {
    let settings = settings();
    let now = Instant::now();
    let mut state = SharePartition::new(10);
    state.acquire("a", 0..14, 10, &settings, now);
    let batch = AckBatch {
        first: 10,
        last: 13,
        types: vec![
            AckType::Accept,
            AckType::Reject,
            AckType::Gap,
            AckType::Release,
        ],
    };
    state.acknowledge("a", &[batch], 3).expect("acks");
    let counts = state.counts();
    assert_eq!(
        (counts.start, counts.available, counts.archived),
        (13, 1, 2)
    );
    let again = state.acquire("b", 0..14, 10, &settings, now);
    assert_eq!(
        again,
        vec![Acquired {
            first: 13,
            last: 13,
            delivery_count: 2
        }]
    );
    let bad = AckBatch {
        first: 13,
        last: 14,
        types: vec![AckType::Accept; 3],
    };
    assert!(matches!(
        state.acknowledge("b", &[bad], 3),
        Err(ShareError::InvalidRequest(_))
    ));
}

#[test]
fn a_member_leaving_releases_its_records_without_counting_the_delivery() {
    let groups = ShareGroups::new(
        ShareSettings {
            auto_offset_reset: ShareReset::Earliest,
            ..settings()
        },
        std::sync::Arc::default(),
    );
    let mut catalog = TopicCatalog::new();
    catalog.insert("q", T, 1, false);
    let now = Instant::now();
    let join = |member: &str| ShareHeartbeat {
        group_id: "g".to_owned(),
        member_id: member.to_owned(),
        member_epoch: 0,
        subscribed_names: Some(vec!["q".to_owned()]),
        ..ShareHeartbeat::default()
    };
    let a = groups.heartbeat(join("a"), &catalog, now).expect("a");
    let b = groups.heartbeat(join("b"), &catalog, now).expect("b");
    // Both get the one partition.
    let expected: Assignment = [(T, BTreeSet::from([0]))].into_iter().collect();
    assert_eq!(a.assignment.as_ref(), Some(&expected));
    assert_eq!(b.assignment.as_ref(), Some(&expected));
    groups
        .session(("g", "a"), 0, &[(T, 0)], &[], Some(7))
        .expect("session");
    let taken = groups.with_partition("g", T, 0, 0, 5, |state, settings| {
        state.acquire("a", 0..5, 5, settings, now)
    });
    assert_eq!(taken.len(), 1);
    let leave = ShareHeartbeat {
        member_epoch: -1,
        subscribed_names: None,
        ..join("a")
    };
    groups.heartbeat(leave, &catalog, now).expect("leave");
    let again = groups.with_partition("g", T, 0, 0, 5, |state, settings| {
        state.acquire("b", 0..5, 5, settings, now)
    });
    assert_eq!(
        again,
        vec![Acquired {
            first: 0,
            last: 4,
            delivery_count: 1
        }]
    );
    assert_eq!(groups.describe("g").map(|d| d.members.len()), Some(1));
}

#[test]
fn sessions_follow_kafkas_epochs() {
    let groups = ShareGroups::new(settings(), std::sync::Arc::default());
    assert_eq!(
        groups.session(("g", "a"), 1, &[], &[], None),
        Err(ShareError::SessionNotFound)
    );
    assert_eq!(
        groups.session(("g", "a"), 0, &[(T, 0)], &[], None),
        Ok(vec![(T, 0)])
    );
    assert_eq!(
        groups.session(("g", "a"), 2, &[], &[], None),
        Err(ShareError::InvalidSessionEpoch)
    );
    assert_eq!(
        groups.session(("g", "a"), 1, &[(T, 1)], &[], None),
        Ok(vec![(T, 0), (T, 1)])
    );
    assert_eq!(
        groups.session(("g", "a"), 2, &[], &[(T, 0)], None),
        Ok(vec![(T, 1)])
    );
    assert_eq!(
        groups.session(("g", "a"), -1, &[], &[], None),
        Ok(vec![(T, 1)])
    );
    assert_eq!(
        groups.session(("g", "a"), 3, &[], &[], None),
        Err(ShareError::SessionNotFound)
    );
}

#[test]
fn latest_starts_at_the_high_watermark_and_earliest_at_the_log_start() {
    let latest = ShareGroups::new(settings(), std::sync::Arc::default());
    let start = latest.with_partition("g", T, 0, 2, 9, |state, _| state.start());
    assert_eq!(start, 9);
    let earliest = ShareGroups::new(
        ShareSettings {
            auto_offset_reset: ShareReset::Earliest,
            ..settings()
        },
        std::sync::Arc::default(),
    );
    let start = earliest.with_partition("g", T, 0, 2, 9, |state, _| state.start());
    assert_eq!(start, 2);
}

#[test]
fn a_stored_state_comes_back_with_acquired_records_available_and_counts_kept() {
    let settings = settings();
    let now = Instant::now();
    let mut state = SharePartition::new(5);
    state.acquire("a", 5..12, 10, &settings, now);
    let batch = AckBatch {
        first: 5,
        last: 8,
        types: vec![
            AckType::Reject,
            AckType::Accept,
            AckType::Release,
            AckType::Accept,
        ],
    };
    state.acknowledge("a", &[batch], 3).expect("acks");
    let (start, text) = state.snapshot(&T);
    assert_eq!(start, 7, "5 archived and 6 accepted are done");
    let mut restored = SharePartition::restore(start, &text, &T).expect("readable");
    let counts = restored.counts();
    // 7 released, 9..=11 acquired by a: all available, 8 acknowledged.
    assert_eq!((counts.start, counts.available, counts.acquired), (7, 4, 0));
    let again = restored.acquire("b", 7..12, 10, &settings, now);
    assert_eq!(
        again,
        vec![
            Acquired {
                first: 7,
                last: 7,
                delivery_count: 2
            },
            Acquired {
                first: 9,
                last: 11,
                delivery_count: 2
            },
        ]
    );
    // Another topic of the same name (deleted and created again) starts
    // anew.
    assert!(SharePartition::restore(start, &text, &[8; 16]).is_none());
    let same = format!("v2 {} 12", "07".repeat(16));
    for bad in [
        "v2 12",
        "v1 x",
        "v1 12 9-8:a:1",
        "v1 12 7-7:q:1",
        "v1 12 3-4:a:1",
        // Overlapping or unordered runs.
        "v1 12 7-9:a:1 8-8:k:1",
        "v1 12 9-9:a:1 7-7:k:1",
        // Far more records than any lock limit, in small runs.
        &format!(
            "v1 9000000 {}",
            (0..60)
                .map(|i| format!("{}-{}:a:0", 7 + i * 2000, 7 + i * 2000 + 1999))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ] {
        assert!(SharePartition::restore(7, bad, &T).is_none(), "{bad}");
    }
    assert!(SharePartition::restore(7, &same, &T).is_some());
}

#[test]
fn overlapping_acknowledgement_batches_and_overflowing_ranges_are_refused() {
    let settings = settings();
    let now = Instant::now();
    let mut state = SharePartition::new(0);
    state.acquire("a", 0..5, 5, &settings, now);
    // An accept then a release of the same records would undo the accept.
    let overlapping = [ack(0, 4, AckType::Accept), ack(2, 3, AckType::Release)];
    assert!(matches!(
        state.acknowledge("a", &overlapping, 3),
        Err(ShareError::InvalidRequest(_))
    ));
    assert!(matches!(
        state.acknowledge("a", &[ack(-1, i64::MAX, AckType::Accept)], 3),
        Err(ShareError::InvalidRequest(_))
    ));
    assert_eq!(state.counts().acquired, 5, "nothing applied");
    state
        .acknowledge(
            "a",
            &[ack(0, 1, AckType::Accept), ack(2, 4, AckType::Release)],
            3,
        )
        .expect("adjacent batches");
    assert_eq!((state.counts().start, state.counts().available), (2, 3));
}

#[test]
fn a_second_load_in_the_same_epoch_keeps_the_first_and_records_at_the_limit_are_archived() {
    let groups = ShareGroups::new(settings(), std::sync::Arc::default());
    let key = ("g", T, 0);
    // Stored: 0..=1 delivered 3 times (the limit), 2 once; all available.
    let stored = format!("v2 {} 3 0-1:a:3 2-2:a:1", "07".repeat(16));
    groups.install(key, 4, Some((0, stored.clone())), 0, 3);
    let counts = groups.counts("g");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (
            counts[0].2.start,
            counts[0].2.available,
            counts[0].2.archived
        ),
        (2, 1, 2),
        "records at the limit archived, not delivered a fourth time"
    );
    assert_eq!(
        groups
            .take_dead(Instant::now())
            .iter()
            .map(|d| d.3.len())
            .sum::<usize>(),
        2
    );
    let taken = groups.with_partition("g", T, 0, 0, 3, |state, settings| {
        state.acquire("m", 0..3, 10, settings, Instant::now())
    });
    assert_eq!(taken.len(), 1);
    // A fetch that began loading before the first install finishes after
    // it: the acquisition stands.
    groups.install(key, 4, Some((0, stored)), 0, 3);
    assert_eq!(groups.counts("g")[0].2.acquired, 1);
    assert!(!groups.needs_load("g", T, 0, 4));
    assert!(groups.needs_load("g", T, 0, 5));
}

#[test]
fn states_wait_for_their_dead_letters_and_former_leaders_forget_theirs() {
    let groups = ShareGroups::new(settings(), std::sync::Arc::default());
    // Latest: both start at the high watermark, 0.
    groups.install(("g", T, 0), 1, None, 0, 0);
    groups.install(("g", T, 1), 1, None, 0, 0);
    let now = Instant::now();
    groups.take_dirty(now);
    groups.with_partition("g", T, 0, 0, 10, |state, settings| {
        state.acquire("m", 0..1, 1, settings, now)
    });
    groups
        .acknowledge("g", "m", T, 0, &[ack(0, 0, AckType::Reject)])
        .expect("reject");
    assert!(
        groups.take_dirty(now).is_empty(),
        "its dead letter is not out yet"
    );
    // Publishing fails (the exchange is missing, say): tried again a
    // second later, the state held meanwhile.
    let dead = groups.take_dead(now);
    groups.restore_dead(
        ("g", T, 0),
        dead.into_iter().flat_map(|d| d.3).collect(),
        now,
    );
    assert!(groups.take_dead(now).is_empty(), "not tried again at once");
    assert!(groups.take_dirty(now).is_empty(), "still not out");
    let later = now + Duration::from_secs(1);
    let dead = groups.take_dead(later);
    assert_eq!(dead.len(), 1, "tried again");
    groups.restore_dead(
        ("g", T, 0),
        dead.into_iter().flat_map(|d| d.3).collect(),
        later,
    );
    // Still failing after the hold: stored all the same, letters kept.
    let held_out = now + DEAD_LETTER_HOLD;
    assert_eq!(
        groups.take_dirty(held_out).len(),
        1,
        "stored after the hold"
    );
    assert_eq!(
        groups.take_dead(held_out).len(),
        1,
        "the letters still wait"
    );
    // Published at last: nothing holds the state any more.
    groups
        .acknowledge("g", "m", T, 0, &[])
        .expect("no acknowledgements");
    assert_eq!(groups.take_dirty(held_out).len(), 1, "published: stored");
    // Partition 1 is led elsewhere now (or in a later epoch).
    groups.retain_led(|_, partition, epoch| partition == 0 && epoch == 1);
    let left: Vec<i32> = groups.counts("g").iter().map(|c| c.1).collect();
    assert_eq!(left, vec![0]);
}

#[test]
fn a_closed_connection_ends_its_sessions_and_releases_what_they_held() {
    let groups = ShareGroups::new(
        ShareSettings {
            auto_offset_reset: ShareReset::Earliest,
            ..settings()
        },
        std::sync::Arc::default(),
    );
    let now = Instant::now();
    groups
        .session(("g", "a"), 0, &[(T, 0)], &[], Some(7))
        .expect("a's session");
    groups
        .session(("g", "b"), 0, &[(T, 0)], &[], Some(8))
        .expect("b's session");
    let held = groups.with_partition("g", T, 0, 0, 3, |state, settings| {
        state.acquire("a", 0..3, 3, settings, now)
    });
    assert_eq!(held.len(), 1);
    groups.connection_closed(8);
    assert_eq!(
        groups.counts("g")[0].2.acquired,
        3,
        "b's connection held nothing"
    );
    groups.connection_closed(7);
    assert_eq!(groups.counts("g")[0].2.available, 3);
    assert_eq!(
        groups.session(("g", "a"), 1, &[], &[], Some(9)),
        Err(ShareError::SessionNotFound),
        "the session ended with its connection"
    );
    let again = groups.with_partition("g", T, 0, 0, 3, |state, settings| {
        state.acquire("b", 0..3, 3, settings, now)
    });
    assert_eq!(
        again[0].delivery_count, 1,
        "the interrupted delivery does not count"
    );
}
