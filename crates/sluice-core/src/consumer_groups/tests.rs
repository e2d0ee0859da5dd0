//! The KIP-848 state machine with simulated time: joins, handovers that
//! wait for revocation, fencing by session and rebalance timeouts, static
//! members, both assignors, regex subscriptions and the commit checks.

use super::*;

const T1: TopicId = [1; 16];
const T2: TopicId = [2; 16];

fn catalog() -> TopicCatalog {
    let mut catalog = TopicCatalog::new();
    catalog.insert("orders", T1, 4, false);
    catalog.insert("payments", T2, 2, false);
    catalog.insert("__consumer_offsets", [9; 16], 50, true);
    catalog
}

fn settings() -> ConsumerGroupSettings {
    ConsumerGroupSettings {
        session_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(1),
        ..ConsumerGroupSettings::default()
    }
}

fn join(member: &str, topics: &[&str]) -> Heartbeat {
    Heartbeat {
        group_id: "g".to_owned(),
        member_id: member.to_owned(),
        member_epoch: 0,
        rebalance_timeout_ms: 5_000,
        subscribed_names: Some(topics.iter().map(|t| (*t).to_owned()).collect()),
        subscribed_regex: Some(String::new()),
        owned: Some(Assignment::new()),
        ..Heartbeat::default()
    }
}

/// An incremental heartbeat reporting what the member owns.
fn beat(member: &str, epoch: i32, owned: &Assignment) -> Heartbeat {
    Heartbeat {
        group_id: "g".to_owned(),
        member_id: member.to_owned(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        owned: Some(owned.clone()),
        ..Heartbeat::default()
    }
}

fn count(assignment: &Assignment) -> usize {
    assignment.values().map(BTreeSet::len).sum()
}

/// A member that applies every assignment it is given, as a client does.
struct Client {
    id: &'static str,
    epoch: i32,
    owned: Assignment,
}

impl Client {
    fn join(groups: &ConsumerGroups, id: &'static str, topics: &[&str], now: Instant) -> Client {
        let answer = groups
            .heartbeat(join(id, topics), &catalog(), now)
            .expect("join");
        Client {
            id,
            epoch: answer.member_epoch,
            owned: answer.assignment.unwrap_or_default(),
        }
    }

    fn beat(&mut self, groups: &ConsumerGroups, now: Instant) -> HeartbeatAnswer {
        let answer = groups
            .heartbeat(beat(self.id, self.epoch, &self.owned), &catalog(), now)
            .expect("heartbeat");
        self.epoch = answer.member_epoch;
        if let Some(assignment) = &answer.assignment {
            self.owned = assignment.clone();
        }
        answer
    }
}

/// No partition owned by two clients at once.
fn disjoint(clients: &[&Client]) {
    for (i, a) in clients.iter().enumerate() {
        for b in &clients[i + 1..] {
            assert!(
                !overlaps(&a.owned, &b.owned),
                "{} and {} both own a partition: {:?} / {:?}",
                a.id,
                b.id,
                a.owned,
                b.owned
            );
        }
    }
}

#[test]
fn a_lone_member_gets_every_subscribed_partition() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let a = Client::join(&groups, "a", &["orders", "payments"], now);
    assert_eq!(a.epoch, 1);
    assert_eq!(count(&a.owned), 6);
    let described = groups.describe("g").expect("group");
    assert_eq!(described.state, "Stable");
    assert_eq!(described.assignor, "uniform");
}

#[test]
fn a_partition_moves_only_after_its_owner_revoked_it() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let mut a = Client::join(&groups, "a", &["orders"], now);
    assert_eq!(count(&a.owned), 4);
    let mut b = Client::join(&groups, "b", &["orders"], now);
    // b's target is 2 partitions, all still held by a.
    assert_eq!(count(&b.owned), 0, "nothing free yet");
    assert_eq!(groups.describe("g").map(|d| d.state), Some("Reconciling"));
    // a is told to give up two, epoch unchanged.
    let answer = a.beat(&groups, now);
    assert_eq!(answer.member_epoch, 1);
    assert_eq!(count(&a.owned), 2);
    disjoint(&[&a, &b]);
    // Before a acknowledges, b still gets nothing.
    b.beat(&groups, now);
    assert_eq!(count(&b.owned), 0);
    // a's next heartbeat no longer lists them: it moves to epoch 2.
    a.beat(&groups, now);
    assert_eq!(a.epoch, 2);
    b.beat(&groups, now);
    assert_eq!(count(&b.owned), 2);
    assert_eq!(b.epoch, 2);
    disjoint(&[&a, &b]);
    assert_eq!(groups.describe("g").map(|d| d.state), Some("Stable"));
}

#[test]
fn a_member_that_never_revokes_is_fenced_after_its_rebalance_timeout() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let mut a = Client::join(&groups, "a", &["orders"], now);
    let mut b = Client::join(&groups, "b", &["orders"], now);
    a.beat(&groups, now); // told to revoke, never does
    // Within its session, past its 5 s rebalance timeout.
    let later = now + Duration::from_secs(6);
    groups
        .heartbeat(beat("b", b.epoch, &b.owned), &catalog(), later)
        .expect("b alive");
    assert_eq!(groups.expire(later), 1);
    b.beat(&groups, later);
    assert_eq!(count(&b.owned), 4, "all of a's partitions are free");
    let refused = groups.heartbeat(beat("a", a.epoch, &a.owned), &catalog(), later);
    assert_eq!(refused, Err(ConsumerGroupError::UnknownMemberId));
}

#[test]
fn a_silent_member_is_fenced_when_its_session_ends() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let _a = Client::join(&groups, "a", &["orders"], now);
    let mut b = Client::join(&groups, "b", &["orders"], now);
    assert_eq!(groups.expire(now + Duration::from_secs(9)), 0);
    // b keeps beating, a says nothing.
    b.beat(&groups, now + Duration::from_secs(5));
    assert_eq!(groups.expire(now + Duration::from_secs(11)), 1);
    b.beat(&groups, now + Duration::from_secs(11));
    assert_eq!(count(&b.owned), 4);
}

#[test]
fn epochs_ahead_are_fenced_and_a_lost_answer_is_forgiven() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let a = Client::join(&groups, "a", &["orders"], now);
    let ahead = groups.heartbeat(beat("a", a.epoch + 1, &a.owned), &catalog(), now);
    assert_eq!(ahead, Err(ConsumerGroupError::FencedMemberEpoch));
    // b joins; a revokes to 2 and moves to epoch 2.
    let mut a = a;
    let _b = Client::join(&groups, "b", &["orders"], now);
    a.beat(&groups, now);
    a.beat(&groups, now);
    assert_eq!(a.epoch, 2);
    // The answer carrying epoch 2 was lost: epoch 1 owning what it has is
    // still accepted; owning more than its assignment is not.
    let again = groups.heartbeat(beat("a", 1, &a.owned), &catalog(), now);
    assert_eq!(again.map(|x| x.member_epoch), Ok(2));
    let mut everything = a.owned.clone();
    everything.entry(T1).or_default().extend(0..4);
    let fenced = groups.heartbeat(beat("a", 1, &everything), &catalog(), now);
    assert_eq!(fenced, Err(ConsumerGroupError::FencedMemberEpoch));
}

#[test]
fn a_static_member_returns_under_a_new_id_to_the_same_partitions() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let static_join = |id: &str| Heartbeat {
        instance_id: Some("instance-1".to_owned()),
        ..join(id, &["orders"])
    };
    let first = groups
        .heartbeat(static_join("a"), &catalog(), now)
        .expect("join");
    let mut b = Client::join(&groups, "b", &["orders"], now);
    // a settles on its share.
    let mut a = Client {
        id: "a",
        epoch: first.member_epoch,
        owned: first.assignment.unwrap_or_default(),
    };
    a.beat(&groups, now);
    a.beat(&groups, now);
    b.beat(&groups, now);
    let kept = a.owned.clone();
    assert_eq!(count(&kept), 2);
    let epoch = groups.describe("g").map(|d| d.group_epoch);
    // A second member with the instance id is refused while a is active.
    assert!(matches!(
        groups.heartbeat(static_join("c"), &catalog(), now),
        Err(ConsumerGroupError::UnreleasedInstanceId(_))
    ));
    let leave = Heartbeat {
        member_epoch: -2,
        instance_id: Some("instance-1".to_owned()),
        ..beat("a", a.epoch, &a.owned)
    };
    assert_eq!(
        groups
            .heartbeat(leave, &catalog(), now)
            .map(|x| x.member_epoch),
        Ok(-2)
    );
    // b does not get a's partitions while a is away.
    b.beat(&groups, now);
    assert_eq!(count(&b.owned), 2);
    let back = groups
        .heartbeat(static_join("c"), &catalog(), now)
        .expect("rejoin");
    assert_eq!(back.assignment, Some(kept));
    assert_eq!(groups.describe("g").map(|d| d.group_epoch), epoch);
}

#[test]
fn range_cuts_each_topic_into_contiguous_ranges() {
    let groups = ConsumerGroups::new(
        ConsumerGroupSettings {
            assignors: vec![Assignor::Range, Assignor::Uniform],
            ..settings()
        },
        std::sync::Arc::default(),
    );
    let now = Instant::now();
    let mut a = Client::join(&groups, "a", &["orders", "payments"], now);
    let mut b = Client::join(&groups, "b", &["orders", "payments"], now);
    for _ in 0..3 {
        a.beat(&groups, now);
        b.beat(&groups, now);
    }
    let expect = |parts: &[(TopicId, &[i32])]| -> Assignment {
        parts
            .iter()
            .map(|(t, ps)| (*t, ps.iter().copied().collect()))
            .collect()
    };
    assert_eq!(a.owned, expect(&[(T1, &[0, 1]), (T2, &[0])]));
    assert_eq!(b.owned, expect(&[(T1, &[2, 3]), (T2, &[1])]));
    assert_eq!(groups.describe("g").map(|d| d.assignor), Some("range"));
}

#[test]
fn a_member_naming_an_assignor_not_configured_is_refused() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let heartbeat = Heartbeat {
        server_assignor: Some("sticky".to_owned()),
        ..join("a", &["orders"])
    };
    assert_eq!(
        groups.heartbeat(heartbeat, &catalog(), Instant::now()),
        Err(ConsumerGroupError::UnsupportedAssignor("sticky".to_owned()))
    );
}

#[test]
fn uniform_balances_and_moves_as_little_as_it_can() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let mut catalog = catalog();
    catalog.insert("big", [3; 16], 12, false);
    let join_big = |id: &str| join(id, &["big"]);
    let mut clients: Vec<Client> = Vec::new();
    for id in ["a", "b", "c"] {
        let answer = groups.heartbeat(join_big(id), &catalog, now).expect("join");
        clients.push(Client {
            id: if id == "a" {
                "a"
            } else if id == "b" {
                "b"
            } else {
                "c"
            },
            epoch: answer.member_epoch,
            owned: answer.assignment.unwrap_or_default(),
        });
        for _ in 0..3 {
            for client in clients.iter_mut() {
                let answer = groups
                    .heartbeat(beat(client.id, client.epoch, &client.owned), &catalog, now)
                    .expect("beat");
                client.epoch = answer.member_epoch;
                if let Some(a) = answer.assignment {
                    client.owned = a;
                }
            }
        }
    }
    let sizes: Vec<usize> = clients.iter().map(|c| count(&c.owned)).collect();
    assert_eq!(sizes, vec![4, 4, 4]);
    disjoint(&clients.iter().collect::<Vec<_>>());
    // c leaves: a and b keep their four each and share c's.
    let before: Vec<Assignment> = clients.iter().map(|c| c.owned.clone()).collect();
    groups
        .heartbeat(beat("c", -1, &clients[2].owned), &catalog, now)
        .expect("leave");
    for client in clients.iter_mut().take(2) {
        for _ in 0..2 {
            let answer = groups
                .heartbeat(beat(client.id, client.epoch, &client.owned), &catalog, now)
                .expect("beat");
            client.epoch = answer.member_epoch;
            if let Some(a) = answer.assignment {
                client.owned = a;
            }
        }
    }
    for (client, before) in clients.iter().zip(&before).take(2) {
        assert_eq!(count(&client.owned), 6);
        assert!(is_subset(before, &client.owned), "sticky: kept its own");
    }
}

#[test]
fn a_regex_matches_whole_names_and_picks_up_new_topics() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let heartbeat = Heartbeat {
        subscribed_names: Some(Vec::new()),
        subscribed_regex: Some("^ord.*|__.*".to_owned()),
        ..join("a", &[])
    };
    let first = groups.heartbeat(heartbeat, &catalog(), now).expect("join");
    let owned = first.assignment.unwrap_or_default();
    assert_eq!(owned.keys().copied().collect::<Vec<_>>(), vec![T1]);
    let mut grown = catalog();
    grown.insert("orders-eu", [4; 16], 1, false);
    let epoch = first.member_epoch;
    let answer = groups
        .heartbeat(beat("a", epoch, &owned), &grown, now)
        .expect("beat");
    assert_eq!(answer.member_epoch, epoch + 1);
    let assignment = answer.assignment.expect("new assignment");
    assert!(assignment.contains_key(&[4; 16]));
    let bad = Heartbeat {
        subscribed_regex: Some("(".to_owned()),
        ..join("b", &[])
    };
    assert!(matches!(
        groups.heartbeat(bad, &catalog(), now),
        Err(ConsumerGroupError::InvalidRegularExpression(_))
    ));
}

#[test]
fn joins_are_validated_as_kafka_does() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let cases = [
        Heartbeat {
            member_id: String::new(),
            ..join("a", &["orders"])
        },
        Heartbeat {
            rebalance_timeout_ms: -1,
            ..join("a", &["orders"])
        },
        Heartbeat {
            owned: None,
            ..join("a", &["orders"])
        },
        Heartbeat {
            subscribed_names: None,
            subscribed_regex: None,
            ..join("a", &["orders"])
        },
        Heartbeat {
            member_epoch: -3,
            ..join("a", &["orders"])
        },
    ];
    for case in cases {
        assert!(
            matches!(
                groups.heartbeat(case.clone(), &catalog(), now),
                Err(ConsumerGroupError::InvalidRequest(_))
            ),
            "{case:?}"
        );
    }
    assert_eq!(
        groups.heartbeat(beat("nobody", 3, &Assignment::new()), &catalog(), now),
        Err(ConsumerGroupError::UnknownMemberId)
    );
}

#[test]
fn commits_need_the_members_current_epoch() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    assert_eq!(groups.check_commit("g", "", -1), None, "no such group");
    let a = Client::join(&groups, "a", &["orders"], now);
    assert_eq!(groups.check_commit("g", "a", a.epoch), Some(Ok(())));
    assert_eq!(
        groups.check_commit("g", "a", a.epoch - 1),
        Some(Err(ConsumerGroupError::StaleMemberEpoch))
    );
    assert_eq!(
        groups.check_commit("g", "zed", a.epoch),
        Some(Err(ConsumerGroupError::UnknownMemberId))
    );
    assert_eq!(
        groups.check_commit("g", "", -1),
        Some(Err(ConsumerGroupError::UnknownMemberId)),
        "an admin commit while the group has members"
    );
    groups
        .heartbeat(beat("a", -1, &a.owned), &catalog(), now)
        .expect("leave");
    assert_eq!(groups.check_commit("g", "", -1), Some(Ok(())));
    assert_eq!(groups.describe("g").map(|d| d.state), Some("Empty"));
    assert_eq!(groups.remove_if_empty("g"), Ok(true));
}

#[test]
fn offset_commits_are_checked_as_kafka_checks_them() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let a = Client::join(&groups, "a", &["orders"], now);
    let check = |member: &str, epoch: i32, version: Option<i16>| {
        groups.check_offset_commit("g", member, epoch, version)
    };
    assert_eq!(check("a", a.epoch, Some(9)), Some(Ok(())));
    assert_eq!(
        check("a", a.epoch + 1, Some(9)),
        Some(Err(ConsumerGroupError::FencedMemberEpoch))
    );
    assert_eq!(
        check("a", a.epoch - 1, Some(9)),
        Some(Err(ConsumerGroupError::StaleMemberEpoch))
    );
    assert_eq!(
        check("a", a.epoch, Some(8)),
        Some(Err(ConsumerGroupError::UnsupportedVersion)),
        "a member of the new protocol commits with OffsetCommit v9+"
    );
    assert_eq!(
        check("", -1, Some(8)),
        Some(Err(ConsumerGroupError::UnknownMemberId))
    );
    // TxnOffsetCommit: without member fields, or with the current epoch.
    assert_eq!(check("", -1, None), Some(Ok(())));
    assert_eq!(check("a", a.epoch, None), Some(Ok(())));
    assert_eq!(
        check("a", a.epoch - 1, None),
        Some(Err(ConsumerGroupError::StaleMemberEpoch)),
        "a zombie's transactional commit"
    );
    assert_eq!(groups.check_offset_commit("h", "", -1, Some(9)), None);
}

#[test]
fn a_static_member_returning_after_its_share_shrank_moves_to_the_new_target() {
    let groups = ConsumerGroups::new(settings(), std::sync::Arc::default());
    let now = Instant::now();
    let static_join = |id: &str| Heartbeat {
        instance_id: Some("instance-1".to_owned()),
        ..join(id, &["orders"])
    };
    let first = groups
        .heartbeat(static_join("a"), &catalog(), now)
        .expect("join");
    let mut a = Client {
        id: "a",
        epoch: first.member_epoch,
        owned: first.assignment.unwrap_or_default(),
    };
    let mut b = Client::join(&groups, "b", &["orders"], now);
    for _ in 0..3 {
        a.beat(&groups, now);
        b.beat(&groups, now);
    }
    assert_eq!((count(&a.owned), count(&b.owned)), (2, 2));
    let leave = Heartbeat {
        member_epoch: -2,
        instance_id: Some("instance-1".to_owned()),
        ..beat("a", a.epoch, &a.owned)
    };
    groups.heartbeat(leave, &catalog(), now).expect("leave");
    // A third member joins while a is away: a's share shrinks to one.
    let mut c = Client::join(&groups, "c", &["orders"], now);
    b.beat(&groups, now);
    c.beat(&groups, now);
    // a returns under a new id, owning nothing: it is not asked to revoke
    // what it does not hold, and gets an epoch (never 0 again).
    let back = groups
        .heartbeat(static_join("a2"), &catalog(), now)
        .expect("rejoin");
    assert!(back.member_epoch > 0, "epoch {}", back.member_epoch);
    let mut a2 = Client {
        id: "a2",
        epoch: back.member_epoch,
        owned: back.assignment.unwrap_or_default(),
    };
    for _ in 0..4 {
        a2.beat(&groups, now);
        b.beat(&groups, now);
        c.beat(&groups, now);
        disjoint(&[&a2, &b, &c]);
    }
    assert_eq!(count(&a2.owned) + count(&b.owned) + count(&c.owned), 4);
    assert!(count(&a2.owned) >= 1);
}
