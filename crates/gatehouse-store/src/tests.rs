//! The conformance suite: every behaviour of the store, run once on SQLite and once on a real
//! PostgreSQL (Debian's package, started by the test harness). A behaviour that holds on one
//! backend and not the other fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{ManualClock, Principal, PrincipalKind, RevocationKind, Revocations};
use gatehouse_testkit::{Postgres, TempDir};

use super::*;

/// One PostgreSQL server for the whole test binary, each test in its own database.
fn postgres() -> &'static Postgres {
    Postgres::shared()
}

/// Both backends, fresh and migrated, named for failure messages. The temporary directory must
/// outlive the SQLite store.
async fn backends(test: &str) -> Vec<(Store, TempDir)> {
    let dir = TempDir::new(&format!("store-{test}"));
    let opts = StoreOptions::default();
    let lite = Store::sqlite(&dir.path().join("store.db"), &opts)
        .await
        .unwrap();
    let pg = postgres();
    let url = pg.create_database(&format!("t_{test}"));
    let pgs = Store::postgres(&url, &opts).await.unwrap();
    vec![
        (lite, dir),
        (pgs, TempDir::new(&format!("store-{test}-pg"))),
    ]
}

fn revocation(kind: RevocationKind, value: &str) -> NewRevocation {
    NewRevocation {
        kind,
        value: value.into(),
        reason: "test".into(),
        actor: "cli:test".into(),
        until: None,
    }
}

fn user(token: &str) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        issuer: "urn:test".into(),
        subject: "s-alice".into(),
        username: "alice".into(),
        display_name: None,
        email: None,
        groups: vec![],
        token_id: Some(token.into()),
        expires_at: None,
        environment: None,
        workload: None,
        derived_from: Vec::new(),
    }
}

#[tokio::test]
async fn migrations_apply_once_and_status_reports_them() {
    for (store, _d) in backends("migrations").await {
        let b = store.backend();
        let status = store.status().await.unwrap();
        assert!(status.iter().all(|s| s.applied), "{b}: {status:?}");
        assert_eq!(
            store.migrate().await.unwrap(),
            Vec::<i64>::new(),
            "{b}: twice"
        );
        store.check_schema().await.unwrap();
    }
}

#[tokio::test]
async fn an_unmigrated_store_is_refused_unless_told_to_migrate() {
    let dir = TempDir::new("store-unmigrated");
    let opts = StoreOptions {
        at_open: AtOpen::Require,
        ..StoreOptions::default()
    };
    let path = dir.path().join("fresh.db");
    let err = Store::sqlite(&path, &opts).await.unwrap_err();
    assert!(matches!(err, StoreError::Pending { .. }), "{err}");
    assert!(err.to_string().contains("gatehouse store migrate"), "{err}");

    let pg = postgres();
    let url = pg.create_database("t_unmigrated");
    let err = Store::postgres(&url, &opts).await.unwrap_err();
    assert!(matches!(err, StoreError::Pending { .. }), "{err}");
    // Then migrated, it opens.
    Store::postgres(&url, &StoreOptions::default())
        .await
        .unwrap();
    Store::postgres(&url, &opts).await.unwrap();
}

#[tokio::test]
async fn a_store_migrated_by_a_newer_version_is_refused() {
    for (store, _d) in backends("newer").await {
        let b = store.backend();
        on_db!(store.db(), |pool| {
            sqlx::query(
                "INSERT INTO gatehouse_migrations (version, description, success, checksum, \
                 execution_time) VALUES (999, 'future', TRUE, $1, 0)",
            )
            .bind(vec![0u8; 48])
            .execute(pool)
            .await
            .unwrap();
        });
        let err = store.check_schema().await.unwrap_err();
        assert!(matches!(err, StoreError::Schema { .. }), "{b}: {err}");
        assert!(err.to_string().contains("999"), "{b}: {err}");
    }
}

#[tokio::test]
async fn a_wrong_password_or_url_names_the_store_and_never_the_password() {
    let pg = postgres();
    let bad = pg.url().replace(pg.password(), "not-the-password");
    let err = Store::postgres(&bad, &StoreOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", pg.port)), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let err = Store::postgres(
        "postgres://u:s3cret@127.0.0.1:notaport/db",
        &StoreOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    for url in [
        "mysql://x",
        "sqlite://",
        "sqlite://a.db?mode=ro",
        "gatehouse.db",
    ] {
        assert!(StoreLocation::parse(url).is_err(), "{url}");
    }
    assert_eq!(
        StoreLocation::parse("sqlite://var/store.db"),
        Ok(StoreLocation::Sqlite("var/store.db".into()))
    );
    assert_eq!(
        StoreLocation::parse("postgresql://h/db"),
        Ok(StoreLocation::Postgres)
    );
}

#[tokio::test]
async fn sqlite_commits_are_synced_and_journaled_ahead() {
    let dir = TempDir::new("store-sync");
    let store = Store::sqlite(&dir.path().join("s.db"), &StoreOptions::default())
        .await
        .unwrap();
    let Db::Sqlite(pool) = store.db() else {
        unreachable!()
    };
    // Every connection of the pool, not only the first.
    for _ in 0..3 {
        let mut conn = pool.acquire().await.unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("store-private");
    let path = dir.path().join("sub/store.db");
    let store = Store::sqlite(&path, &StoreOptions::default())
        .await
        .unwrap();
    store
        .revocations()
        .revoke(revocation(RevocationKind::Token, "j"), 1)
        .await
        .unwrap();
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let p = dir.path().join("sub").join(f);
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(
                m.permissions().mode() & 0o077,
                0,
                "{f} is readable by others"
            );
        }
    }
}

#[tokio::test]
async fn revocations_are_logged_in_order_listed_and_lifted() {
    for (store, _d) in backends("revlog").await {
        let b = store.backend();
        let log = store.revocations();
        let a = log
            .revoke(revocation(RevocationKind::Token, "jti-a"), 100)
            .await
            .unwrap();
        let s = log
            .revoke(
                NewRevocation {
                    until: Some(150),
                    ..revocation(RevocationKind::SshCert, "42")
                },
                101,
            )
            .await
            .unwrap();
        assert!(s.seq > a.seq, "{b}");
        let listed = log.in_force(120).await.unwrap();
        assert_eq!(listed.len(), 2, "{b}: {listed:?}");
        assert_eq!(listed[0].actor, "cli:test");
        assert_eq!(listed[0].at, 100);
        assert_eq!(log.in_force(151).await.unwrap().len(), 1, "{b}: lapsed");

        let lifted = log
            .lift(RevocationKind::Token, "jti-a", "cli:test", 130)
            .await
            .unwrap();
        assert!(lifted.is_some_and(|c| c.lift && c.seq > s.seq), "{b}");
        assert!(
            log.lift(RevocationKind::Token, "jti-a", "cli:test", 131)
                .await
                .unwrap()
                .is_none(),
            "{b}: nothing left to lift"
        );
        let listed = log.in_force(131).await.unwrap();
        assert_eq!(listed.len(), 1, "{b}: {listed:?}");
        assert_eq!(listed[0].change.kind, RevocationKind::SshCert);

        let all = log.since(0, 100).await.unwrap();
        assert_eq!(all.len(), 3, "{b}");
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "{b}: ordered");
        assert_eq!(log.since(all[1].seq, 100).await.unwrap().len(), 1, "{b}");

        let err = log
            .revoke(revocation(RevocationKind::SshCert, "not-a-serial"), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{b}: {err}");
    }
}

#[tokio::test]
async fn a_feed_brings_another_nodes_revocation_within_a_second() {
    for (store, _d) in backends("feed").await {
        let b = store.backend();
        // Node B's view, fed from the store; node A writes through its own handle.
        let set = Arc::new(Revocations::new());
        let clock = Arc::new(ManualClock::new(1_000));
        // On PostgreSQL the poll is too slow to pass: only the notification can.
        let poll = if b == "postgres" {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(200)
        };
        let feed = RevocationFeed::new(store.clone(), set.clone(), clock, poll);
        store
            .revocations()
            .revoke(revocation(RevocationKind::Token, "before-start"), 900)
            .await
            .unwrap();
        assert_eq!(feed.load().await.unwrap(), 1, "{b}");
        assert!(set.check(&user("before-start"), 1_000).is_some(), "{b}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(feed.run(async {
            let _ = stopped.await;
        }));
        // Let the listener (PostgreSQL) settle, then revoke and time the arrival.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..5 {
            let jti = format!("jti-{i}");
            let started = std::time::Instant::now();
            store
                .revocations()
                .revoke(revocation(RevocationKind::Token, &jti), 1_000)
                .await
                .unwrap();
            while set.check(&user(&jti), 1_000).is_none() {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{b}: revocation {i} not seen within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        store
            .revocations()
            .lift(RevocationKind::Token, "jti-0", "cli:test", 1_000)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while set.check(&user("jti-0"), 1_000).is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{b}: lift not seen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_revocation_is_never_shortened_by_another_and_pruning_brings_none_back() {
    for (store, _d) in backends("no_shorten").await {
        let b = store.backend();
        let log = store.revocations();
        let day = 86_400;
        log.revoke(revocation(RevocationKind::Token, "x"), 1_000)
            .await
            .unwrap();
        // Revoked again "for a second": still revoked for good.
        let again = log
            .revoke(
                NewRevocation {
                    until: Some(1_001),
                    ..revocation(RevocationKind::Token, "x")
                },
                1_000,
            )
            .await
            .unwrap();
        assert_eq!(again.until, None, "{b}");
        // A longer one over a shorter one takes the longer; a shorter over a longer keeps it.
        for (first, second, want) in [(2_000, 3_000, 3_000), (3_000, 2_000, 3_000)] {
            let v = format!("y{first}");
            for until in [first, second] {
                log.revoke(
                    NewRevocation {
                        until: Some(until),
                        ..revocation(RevocationKind::Token, &v)
                    },
                    1_000,
                )
                .await
                .unwrap();
            }
            let set = Revocations::new();
            log.catch_up(&set).await.unwrap();
            assert!(set.check(&user(&v), want).is_some(), "{b}: {v}");
            assert!(set.check(&user(&v), want + 1).is_none(), "{b}: {v}");
        }
        // A lapsed revocation does not stretch a new one.
        log.revoke(
            NewRevocation {
                until: Some(5_000),
                ..revocation(RevocationKind::Token, "z")
            },
            6_000,
        )
        .await
        .unwrap();
        // Prune a day later: nothing that was in force comes back or goes.
        log.revoke(revocation(RevocationKind::Token, "head"), 7_000)
            .await
            .unwrap();
        log.prune(3_001 + day).await.unwrap();
        let set = Revocations::new();
        log.catch_up(&set).await.unwrap();
        assert!(set.check(&user("x"), 3_001 + day).is_some(), "{b}");
        assert!(set.check(&user("y2000"), 3_001 + day).is_none(), "{b}");
        assert!(set.check(&user("y3000"), 3_001 + day).is_none(), "{b}");
        assert!(
            log.in_force(3_001 + day)
                .await
                .unwrap()
                .iter()
                .all(|r| r.change.value != "y2000" && r.change.value != "y3000"),
            "{b}"
        );
    }
}

#[tokio::test]
async fn lapsed_entries_are_pruned_and_what_is_in_force_is_kept() {
    for (store, _d) in backends("prune").await {
        let b = store.backend();
        let log = store.revocations();
        let day = 86_400;
        log.revoke(
            NewRevocation {
                until: Some(1_000),
                ..revocation(RevocationKind::Token, "old")
            },
            900,
        )
        .await
        .unwrap();
        log.revoke(revocation(RevocationKind::Subject, "forever"), 900)
            .await
            .unwrap();
        log.revoke(revocation(RevocationKind::Token, "lifted"), 900)
            .await
            .unwrap();
        log.lift(RevocationKind::Token, "lifted", "t", 950)
            .await
            .unwrap();
        log.revoke(
            NewRevocation {
                until: Some(1_000),
                ..revocation(RevocationKind::Token, "newest")
            },
            960,
        )
        .await
        .unwrap();
        // A day and more after: the lapsed ones and the old lift go, the head stays.
        let n = log.prune(1_001 + day).await.unwrap();
        assert_eq!(
            n, 3,
            "{b}: the lapsed token, and the lifted one with its lift"
        );
        let left: Vec<String> = log
            .since(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.value)
            .collect();
        assert!(left.contains(&"forever".to_owned()), "{b}: {left:?}");
        assert!(
            left.contains(&"newest".to_owned()),
            "{b}: the head is kept: {left:?}"
        );
        assert!(!left.contains(&"old".to_owned()), "{b}: {left:?}");
        assert!(!left.contains(&"lifted".to_owned()), "{b}: {left:?}");
        // Replaying what is left gives what is in force.
        let set = Revocations::new();
        log.catch_up(&set).await.unwrap();
        assert!(
            set.check(
                &Principal {
                    username: "forever".into(),
                    ..user("x")
                },
                1_001 + day
            )
            .is_some(),
            "{b}"
        );
        assert!(
            set.check(&user("lifted"), 1_001 + day).is_none(),
            "{b}: a lift outlived by its revocation"
        );
    }
}

#[tokio::test]
async fn a_log_restored_to_an_older_state_is_reloaded_not_skipped() {
    for (store, _d) in backends("restored").await {
        let b = store.backend();
        let log = store.revocations();
        for v in ["a", "b", "c"] {
            log.revoke(revocation(RevocationKind::Token, v), 1)
                .await
                .unwrap();
        }
        let set = Revocations::new();
        log.catch_up(&set).await.unwrap();
        assert_eq!(set.seq(), log.head().await.unwrap(), "{b}");
        // A restore to the state after "a": the newer entries are gone and the sequence goes
        // back (SQLite's AUTOINCREMENT remembers in sqlite_sequence, PostgreSQL in its sequence).
        on_db!(store.db(), |pool| {
            sqlx::query("DELETE FROM revocation_log WHERE value <> 'a'")
                .execute(pool)
                .await
                .unwrap();
        });
        match store.db() {
            Db::Sqlite(pool) => {
                sqlx::query("UPDATE sqlite_sequence SET seq = 1 WHERE name = 'revocation_log'")
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Db::Postgres(pool) => {
                sqlx::query("SELECT setval('revocation_log_seq_seq', 1)")
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
        // Written to since, past the node's position before the node reads: the head alone
        // no longer says the log went back.
        for v in ["d", "e", "f"] {
            log.revoke(revocation(RevocationKind::Token, v), 2)
                .await
                .unwrap();
        }
        assert!(log.head().await.unwrap() > set.seq(), "{b}");
        log.catch_up(&set).await.unwrap();
        for v in ["d", "e", "f"] {
            assert!(
                set.check(&user(v), 2).is_some(),
                "{b}: the new entry {v} was skipped"
            );
        }
        for v in ["b", "c"] {
            assert!(
                set.check(&user(v), 2).is_none(),
                "{b}: {v}, which the restore removed, stays"
            );
        }
        assert_eq!(set.seq(), log.head().await.unwrap(), "{b}");
        // And a log that went back without new entries is reloaded too.
        on_db!(store.db(), |pool| {
            sqlx::query("DELETE FROM revocation_log WHERE value <> 'a'")
                .execute(pool)
                .await
                .unwrap();
        });
        log.catch_up(&set).await.unwrap();
        assert!(set.check(&user("f"), 2).is_none(), "{b}");
        assert!(set.check(&user("a"), 2).is_some(), "{b}");
    }
}

#[tokio::test]
async fn concurrent_writers_never_let_a_reader_skip_a_sequence_number() {
    for (store, _d) in backends("concurrent").await {
        let b = store.backend();
        let set = Arc::new(Revocations::new());
        let mut writers = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..25 {
                    store
                        .revocations()
                        .revoke(revocation(RevocationKind::Token, &format!("w{w}-{i}")), 1)
                        .await
                        .unwrap();
                }
            }));
        }
        // A reader catching up while they write must end with all 100, none skipped.
        let reader = {
            let store = store.clone();
            let set = set.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    store.revocations().catch_up(&set).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        for w in writers {
            w.await.unwrap();
        }
        reader.await.unwrap();
        store.revocations().catch_up(&set).await.unwrap();
        for w in 0..4 {
            for i in 0..25 {
                assert!(
                    set.check(&user(&format!("w{w}-{i}")), 1).is_some(),
                    "{b}: w{w}-{i} was skipped"
                );
            }
        }
    }
}

#[tokio::test]
async fn session_records_put_get_take_and_sweep_alike() {
    for (store, _d) in backends("sessions").await {
        let b = store.backend();
        let s = store.sessions();
        let k = "ab".repeat(32);
        assert_eq!(s.get("sessions", &k).await.unwrap(), None, "{b}");
        s.put("sessions", &k, 100, b"sealed-1").await.unwrap();
        s.put("sessions", &k, 200, b"sealed-2\0\xff").await.unwrap();
        assert_eq!(
            s.get("sessions", &k).await.unwrap().as_deref(),
            Some(&b"sealed-2\0\xff"[..]),
            "{b}: replaced, bytes kept exactly"
        );
        assert_eq!(
            s.get("other", &k).await.unwrap(),
            None,
            "{b}: kinds are apart"
        );
        s.put("sessions", "old", 50, b"x").await.unwrap();
        assert_eq!(s.sweep(100).await.unwrap(), 1, "{b}");
        assert_eq!(s.get("sessions", "old").await.unwrap(), None, "{b}");

        // Of many concurrent takes, exactly one gets the record.
        let mut takers = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            let k = k.clone();
            takers.push(tokio::spawn(async move {
                store.sessions().take("sessions", &k).await.unwrap()
            }));
        }
        let mut got = 0;
        for t in takers {
            got += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(got, 1, "{b}");
        s.delete("sessions", &k).await.unwrap();
        // A leased update of a record taken meanwhile (signed out on another node) writes
        // nothing: the session stays gone.
        s.put("sessions", &k, 200, b"v").await.unwrap();
        assert!(s.try_lease("sessions", &k, "n1", 30_000).await.unwrap());
        s.take("sessions", &k).await.unwrap();
        assert!(
            !s.update_leased("sessions", &k, "n1", 200, b"v2")
                .await
                .unwrap(),
            "{b}"
        );
        assert_eq!(
            s.get("sessions", &k).await.unwrap(),
            None,
            "{b}: resurrected"
        );
    }
}

#[tokio::test]
async fn a_renewal_lease_has_one_holder_until_released_or_expired() {
    for (store, _d) in backends("lease").await {
        let b = store.backend();
        let s = store.sessions();
        assert!(
            !s.try_lease("sessions", "k", "a", 10_000).await.unwrap(),
            "{b}: no record"
        );
        s.put("sessions", "k", 100, b"v").await.unwrap();
        // Many nodes at once: one holder.
        let mut tries = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            tries.push(tokio::spawn(async move {
                let h = format!("n{i}");
                let got = store
                    .sessions()
                    .try_lease("sessions", "k", &h, 30_000)
                    .await
                    .unwrap();
                got.then_some(h)
            }));
        }
        let mut holders = Vec::new();
        for t in tries {
            holders.extend(t.await.unwrap());
        }
        assert_eq!(holders.len(), 1, "{b}: {holders:?}");
        let h = holders.remove(0);
        assert!(
            !s.try_lease("sessions", "k", "z", 30_000).await.unwrap(),
            "{b}"
        );
        assert!(
            s.try_lease("sessions", "k", &h, 30_000).await.unwrap(),
            "{b}: renewable by its holder"
        );
        // A write keeps the lease; only the holder's leased update lands; a release by another
        // holder does nothing.
        s.put("sessions", "k", 100, b"v2").await.unwrap();
        assert!(
            !s.update_leased("sessions", "k", "z", 100, b"no")
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            s.update_leased("sessions", "k", &h, 100, b"v3")
                .await
                .unwrap(),
            "{b}"
        );
        assert_eq!(
            s.get("sessions", "k").await.unwrap().as_deref(),
            Some(&b"v3"[..])
        );
        s.release("sessions", "k", "z").await.unwrap();
        assert!(
            !s.try_lease("sessions", "k", "z", 30_000).await.unwrap(),
            "{b}"
        );
        s.release("sessions", "k", &h).await.unwrap();
        // Released: another may take it, for a moment; run out (a node died holding it), anyone.
        assert!(
            s.try_lease("sessions", "k", "z", 50).await.unwrap(),
            "{b}: released"
        );
        assert!(
            !s.try_lease("sessions", "k", &h, 30_000).await.unwrap(),
            "{b}"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            s.try_lease("sessions", "k", &h, 30_000).await.unwrap(),
            "{b}: run out"
        );
    }
}

#[tokio::test]
async fn ending_an_environment_revokes_what_is_bound_to_it() {
    for (store, _d) in backends("envs").await {
        let b = store.backend();
        let envs = store.environments();
        let e = envs
            .create("review-42", "cli:test", 1_000, 4_600)
            .await
            .unwrap();
        assert!(
            e.id.starts_with("env-") && e.id.len() == 36,
            "{b}: {}",
            e.id
        );
        assert!(e.is_live(1_000) && !e.is_live(4_600), "{b}");
        let other = envs
            .create("review-43", "cli:test", 1_000, 4_600)
            .await
            .unwrap();
        assert_eq!(envs.live(2_000).await.unwrap().len(), 2, "{b}");
        assert_eq!(envs.live(5_000).await.unwrap().len(), 0, "{b}: expired");
        assert!(envs.create("", "x", 1, 2).await.is_err(), "{b}");
        assert!(envs.create("n", "x", 2, 2).await.is_err(), "{b}");

        let set = Arc::new(Revocations::new());
        let bound = Principal {
            environment: Some(e.id.clone()),
            ..user("t-1")
        };
        let ended = envs.end(&e.id, "cli:ops", 2_000).await.unwrap().unwrap();
        assert_eq!(ended.ended_at, Some(2_000), "{b}");
        assert_eq!(ended.ended_by.as_deref(), Some("cli:ops"), "{b}");
        assert!(!ended.is_live(2_001), "{b}");
        store.revocations().catch_up(&set).await.unwrap();
        assert_eq!(
            set.check(&bound, 2_001).map(|r| r.reason()),
            Some("environment_ended"),
            "{b}"
        );
        let elsewhere = Principal {
            environment: Some(other.id.clone()),
            ..user("t-2")
        };
        assert_eq!(set.check(&elsewhere, 2_001), None, "{b}");
        let live = envs.live(2_001).await.unwrap();
        assert_eq!(live.len(), 1, "{b}");
        assert_eq!(live[0].id, other.id);
        // Ending it again keeps the first end; an unknown id is no environment.
        let again = envs
            .end(&e.id, "cli:someone", 3_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.ended_at, Some(2_000), "{b}");
        assert!(envs.end("env-nope", "x", 1).await.unwrap().is_none(), "{b}");
    }
}

#[tokio::test]
async fn leases_are_listed_revoked_once_ended_by_job_and_pruned() {
    for (store, _d) in backends("leases").await {
        let b = store.backend();
        let leases = store.leases();
        let new = |id: &'static str, path: &'static str, job: Option<&'static str>| NewLease {
            id,
            path,
            version: 3,
            holder: "urn:ci repo:acme/api",
            token_id: Some("jti-1"),
            job_id: job,
            issued_at: 1_000,
            expires_at: 2_000,
        };
        let job = "ci.example/acme/api/run/7/job/9";
        leases
            .create(&new("lease_a", "prod/acme/api/db", Some(job)))
            .await
            .unwrap();
        leases
            .create(&new("lease_b", "prod/acme/web/db", Some(job)))
            .await
            .unwrap();
        leases
            .create(&new("lease_c", "prod/acme/api/key", Some("other")))
            .await
            .unwrap();
        leases
            .create(&new("lease_d", "Prod/acme/api/db", None))
            .await
            .unwrap();
        // An id is used once.
        assert!(
            leases.create(&new("lease_a", "x", None)).await.is_err(),
            "{b}"
        );

        let ids = |v: Vec<Lease>| -> Vec<String> {
            let mut ids: Vec<String> = v.into_iter().map(|l| l.id).collect();
            ids.sort();
            ids
        };
        let of_job = LeaseFilter {
            job_id: Some(job),
            ..LeaseFilter::default()
        };
        assert_eq!(
            ids(leases.list(&of_job).await.unwrap()),
            ["lease_a", "lease_b"],
            "{b}"
        );
        // A prefix is case-sensitive on both backends, and `_`/`%` in it are plain characters.
        let under = LeaseFilter {
            prefix: Some("prod/acme/api/"),
            ..LeaseFilter::default()
        };
        assert_eq!(
            ids(leases.list(&under).await.unwrap()),
            ["lease_a", "lease_c"],
            "{b}"
        );
        let wild = LeaseFilter {
            prefix: Some("prod_acme%"),
            ..LeaseFilter::default()
        };
        assert!(leases.list(&wild).await.unwrap().is_empty(), "{b}");

        assert!(
            leases
                .revoke("lease_c", "cli:ops", "revoked", 1_500)
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            !leases.revoke("lease_c", "x", "again", 1_600).await.unwrap(),
            "{b}: once"
        );
        let c = leases.get("lease_c").await.unwrap().unwrap();
        assert_eq!(
            (c.revoked_at, c.revoked_by.as_deref(), c.reason.as_deref()),
            (Some(1_500), Some("cli:ops"), Some("revoked")),
            "{b}: the first revocation stands"
        );
        assert!(!c.is_live(1_501), "{b}");

        assert_eq!(
            leases
                .revoke_job(job, "job:end", "job_ended", 1_700)
                .await
                .unwrap(),
            2,
            "{b}"
        );
        assert_eq!(
            leases
                .revoke_job(job, "job:end", "job_ended", 1_800)
                .await
                .unwrap(),
            0,
            "{b}"
        );
        let live = LeaseFilter {
            live_at: Some(1_900),
            ..LeaseFilter::default()
        };
        assert_eq!(ids(leases.list(&live).await.unwrap()), ["lease_d"], "{b}");
        assert!(
            leases
                .list(&LeaseFilter {
                    live_at: Some(2_000),
                    ..LeaseFilter::default()
                })
                .await
                .unwrap()
                .is_empty(),
            "{b}: lapsed"
        );

        // Pruning keeps what ended after the cut-off.
        assert_eq!(leases.prune(1_600).await.unwrap(), 1, "{b}: lease_c");
        assert_eq!(leases.prune(2_001).await.unwrap(), 3, "{b}");
        assert!(leases.get("lease_a").await.unwrap().is_none(), "{b}");
    }
}

#[tokio::test]
async fn the_push_index_finds_what_the_forge_confirmed() {
    for (store, _d) in backends("pushes").await {
        let b = store.backend();
        let idx = store.pushes();
        let c1 = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        let push = |git_ref: &str, commit: &str, node: &str, seq: i64| IndexedPush {
            repo: "acme/api".into(),
            git_ref: git_ref.into(),
            commit: commit.into(),
            node: node.into(),
            audit_seq: seq,
            pushed_at: 1_000 + seq,
            pushed_by: "alice".into(),
            confirmed_at: None,
            old: Some("0".repeat(40)),
            pusher_issuer: Some("urn:test".into()),
            pusher_subject: Some("s-alice".into()),
        };
        idx.record(&[
            push("refs/heads/main", c1, "gw-1", 7),
            push("refs/tags/v1", c1, "gw-1", 7),
        ])
        .await
        .unwrap();
        // Announced, not confirmed: found, but not as pushed.
        let found = idx
            .find("acme/api", "refs/heads/main", c1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.audit_seq, found.confirmed_at), (7, None), "{b}");
        // A push event's (before, after) finds the same update, with its pusher; another
        // `before` is another update.
        let upd = idx
            .find_update("acme/api", "refs/heads/main", &"0".repeat(40), c1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                upd.audit_seq,
                upd.pusher_subject.as_deref(),
                upd.old.as_deref()
            ),
            (7, Some("s-alice"), Some("0".repeat(40).as_str())),
            "{b}"
        );
        assert!(
            idx.find_update("acme/api", "refs/heads/main", &"1".repeat(40), c1)
                .await
                .unwrap()
                .is_none(),
            "{b}"
        );
        // The forge said ok to main only.
        let n = idx
            .confirm("gw-1", 7, &["refs/heads/main".into()], 1_010)
            .await
            .unwrap();
        assert_eq!(n, 1, "{b}");
        let found = idx
            .find("acme/api", "refs/heads/main", c1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.confirmed_at, Some(1_010), "{b}");
        assert_eq!(
            idx.find("acme/api", "refs/tags/v1", c1)
                .await
                .unwrap()
                .unwrap()
                .confirmed_at,
            None,
            "{b}"
        );
        // The same seq on another node is another push; a confirmation names its own.
        idx.record(&[push("refs/tags/v1", &c1.to_ascii_uppercase(), "gw-2", 7)])
            .await
            .unwrap();
        assert_eq!(
            idx.confirm("gw-1", 7, &["refs/tags/v1".into()], 1_020)
                .await
                .unwrap(),
            1,
            "{b}"
        );
        assert_eq!(
            idx.confirm("gw-1", 7, &["refs/tags/v1".into()], 1_030)
                .await
                .unwrap(),
            0,
            "{b}: once"
        );
        // A confirmed push is preferred to a newer unconfirmed one.
        idx.record(&[push("refs/heads/main", c1, "gw-2", 9)])
            .await
            .unwrap();
        let found = idx
            .find("acme/api", "refs/heads/main", c1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.node.as_str(), found.audit_seq), ("gw-1", 7), "{b}");
        assert!(
            idx.find("acme/api", "refs/heads/dev", c1)
                .await
                .unwrap()
                .is_none(),
            "{b}"
        );
        assert!(
            idx.find("acme/web", "refs/heads/main", c1)
                .await
                .unwrap()
                .is_none(),
            "{b}"
        );
        // Names are compared as stored: the gateway folds case for case-insensitive forges.
        assert!(
            idx.find("Acme/API", "refs/heads/main", c1)
                .await
                .unwrap()
                .is_none(),
            "{b}"
        );
        assert!(
            idx.find("acme/api", "refs/heads/MAIN", c1)
                .await
                .unwrap()
                .is_none(),
            "{b}"
        );
        assert_eq!(idx.prune(1_008).await.unwrap(), 3, "{b}");
        let left = idx
            .find("acme/api", "refs/heads/main", c1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((left.audit_seq, left.confirmed_at), (9, None), "{b}");
    }
}

fn delivery<'a>(id: &'a str, source: &'a str, repo: &'a str, at: i64) -> NewDelivery<'a> {
    NewDelivery {
        id,
        hook: "gitea",
        source_id: source,
        scheme: "gitea",
        event: "push",
        repo: Some(repo),
        sender: Some("alice"),
        headers: "X-Gitea-Event: push\n",
        // Not UTF-8, with a NUL: kept byte for byte.
        body: b"{\"a\":1}\x00\xff",
        annotation: None,
        received_at: at,
        also_seen: None,
    }
}

#[tokio::test]
async fn webhook_deliveries_are_kept_once_claimed_once_and_finished_under_their_claim() {
    for (store, _d) in backends("hooks").await {
        let b = store.backend();
        let hooks = store.hooks();
        let targets = |order: Option<&'static str>| {
            vec![
                NewTarget {
                    name: "deploy",
                    order_key: order,
                    give_up_at: 5_000,
                },
                NewTarget {
                    name: "chat",
                    order_key: None,
                    give_up_at: 5_000,
                },
            ]
        };
        let Accepted::New(s1) = hooks
            .accept(
                &delivery("whd_1", "u-1", "acme/api", 1_000),
                &targets(Some("acme/api")),
                0,
            )
            .await
            .unwrap()
        else {
            panic!("{b}: not kept")
        };
        // The same sender id again within the window: a replay, nothing kept.
        assert_eq!(
            hooks
                .accept(
                    &delivery("whd_1b", "u-1", "acme/api", 1_001),
                    &targets(None),
                    0
                )
                .await
                .unwrap(),
            Accepted::Duplicate,
            "{b}"
        );
        assert!(hooks.get_by_id("whd_1b").await.unwrap().is_none(), "{b}");
        let got = hooks.get(s1).await.unwrap().unwrap();
        assert_eq!(got.body, b"{\"a\":1}\x00\xff", "{b}: the exact bytes");
        assert_eq!(
            (got.id.as_str(), got.hook.as_str()),
            ("whd_1", "gitea"),
            "{b}"
        );
        // A second delivery of the same repository, and one of another.
        let Accepted::New(s2) = hooks
            .accept(
                &delivery("whd_2", "u-2", "acme/api", 1_002),
                &targets(Some("acme/api")),
                0,
            )
            .await
            .unwrap()
        else {
            panic!("{b}")
        };
        let Accepted::New(s3) = hooks
            .accept(
                &delivery("whd_3", "u-3", "acme/web", 1_003),
                &targets(Some("acme/web")),
                0,
            )
            .await
            .unwrap()
        else {
            panic!("{b}")
        };
        assert!(s1 < s2 && s2 < s3, "{b}: accept order");

        // An ordered target gets acme/api's first delivery, not its second, and acme/web's.
        let a = hooks
            .claim_due("deploy", "node-a", 1_010, 1_040, 10)
            .await
            .unwrap();
        assert_eq!(
            a.iter().map(|c| c.delivery_seq).collect::<Vec<_>>(),
            [s1, s3],
            "{b}"
        );
        // Claimed rows are nobody else's until the claim lapses.
        assert!(
            hooks
                .claim_due("deploy", "node-b", 1_020, 1_050, 10)
                .await
                .unwrap()
                .is_empty(),
            "{b}"
        );
        // An unordered target gets all three.
        let chat = hooks
            .claim_due("chat", "node-b", 1_010, 1_040, 10)
            .await
            .unwrap();
        assert_eq!(chat.len(), 3, "{b}");
        // s1 delivered to deploy: s2 is due there now. s3 failed: again at 1_100.
        assert!(
            hooks
                .finish(&a[0], &Finish::Delivered { status: 204 }, 1_011)
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            hooks
                .finish(
                    &a[1],
                    &Finish::Retry {
                        status: Some(503),
                        error: "503".into(),
                        next_at: 1_100
                    },
                    1_012
                )
                .await
                .unwrap(),
            "{b}"
        );
        // Finishing twice, or under a lapsed claim, writes nothing.
        assert!(
            !hooks
                .finish(&a[0], &Finish::Delivered { status: 200 }, 1_013)
                .await
                .unwrap(),
            "{b}"
        );
        let again = hooks
            .claim_due("deploy", "node-b", 1_050, 1_080, 10)
            .await
            .unwrap();
        assert_eq!(
            again.iter().map(|c| c.delivery_seq).collect::<Vec<_>>(),
            [s2],
            "{b}: delivered is never claimed again; the retry waits"
        );
        // At 1_100 the retry is due, and node-b's claim on s2 lapsed (at 1_080): node-a takes
        // both, and node-b's finish under its lapsed claim is refused.
        let late = hooks
            .claim_due("deploy", "node-a", 1_100, 1_130, 10)
            .await
            .unwrap();
        assert_eq!(
            late.iter()
                .map(|c| (c.delivery_seq, c.attempts))
                .collect::<Vec<_>>(),
            [(s2, 0), (s3, 1)],
            "{b}"
        );
        assert!(
            !hooks
                .finish(&again[0], &Finish::Delivered { status: 200 }, 1_101)
                .await
                .unwrap(),
            "{b}"
        );
        assert!(
            hooks
                .finish(
                    &late[1],
                    &Finish::Dead {
                        status: None,
                        error: "connection refused".into()
                    },
                    1_101
                )
                .await
                .unwrap(),
            "{b}"
        );
        let taken = [late[0].clone()];

        // The dead letters, listed, then retried.
        let dead = hooks
            .list(&AttemptFilter {
                state: Some("dead"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{b}");
        assert_eq!(
            (
                dead[0].delivery.as_str(),
                dead[0].target.as_str(),
                dead[0].attempts
            ),
            ("whd_3", "deploy", 2),
            "{b}"
        );
        assert_eq!(
            dead[0].last_error.as_deref(),
            Some("connection refused"),
            "{b}"
        );
        let counts = hooks.counts().await.unwrap();
        assert!(
            counts.contains(&("gitea".into(), "deploy".into(), "dead".into(), 1, 1_100)),
            "{b}: {counts:?}"
        );
        assert_eq!(
            hooks
                .requeue(&AttemptFilter::default(), true, 1_200, 9_000)
                .await
                .unwrap(),
            1,
            "{b}: only the dead one is retried"
        );
        // A replay of a delivered one sends it again.
        assert_eq!(
            hooks
                .requeue(
                    &AttemptFilter {
                        delivery: Some("whd_1"),
                        target: Some("deploy"),
                        ..Default::default()
                    },
                    false,
                    1_200,
                    9_000
                )
                .await
                .unwrap(),
            1,
            "{b}"
        );
        let due = hooks
            .claim_due("deploy", "node-a", 1_200, 1_230, 10)
            .await
            .unwrap();
        assert_eq!(
            due.iter().map(|c| c.delivery_seq).collect::<Vec<_>>(),
            [s1, s3],
            "{b}: s2 waits behind the replayed s1 (same repository)"
        );

        // Pruning keeps what a target still waits for, and forgets old delivery ids.
        for c in due.iter().chain(taken.iter()).chain(chat.iter()) {
            hooks
                .finish(c, &Finish::Delivered { status: 200 }, 1_300)
                .await
                .unwrap();
        }
        assert_eq!(hooks.prune(2_000, 2_000).await.unwrap(), 3, "{b}");
        assert!(hooks.get(s1).await.unwrap().is_none(), "{b}");
        assert!(
            matches!(
                hooks
                    .accept(&delivery("whd_1c", "u-1", "acme/api", 2_100), &[], 0)
                    .await
                    .unwrap(),
                Accepted::New(_)
            ),
            "{b}: a delivery id is forgotten once pruned"
        );
        // And one seen before the window is new again even unpruned.
        assert!(
            matches!(
                hooks
                    .accept(&delivery("whd_1d", "u-1", "acme/api", 2_200), &[], 2_150)
                    .await
                    .unwrap(),
                Accepted::New(_)
            ),
            "{b}"
        );
    }
}

#[tokio::test]
async fn concurrent_workers_never_claim_one_row_twice() {
    for (store, _d) in backends("hookclaims").await {
        let b = store.backend();
        for i in 0..40 {
            let (id, src) = (format!("whd_{i}"), format!("u-{i}"));
            store
                .hooks()
                .accept(
                    &delivery(&id, &src, "acme/api", 1_000),
                    &[NewTarget {
                        name: "t",
                        order_key: None,
                        give_up_at: 9_000,
                    }],
                    0,
                )
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .hooks()
                        .claim_due("t", &format!("w{w}"), 1_010, 1_100, 3)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|c| c.delivery_seq));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(
            (n, all.len()),
            (40, 40),
            "{b}: each row claimed exactly once"
        );
    }
}

#[tokio::test]
async fn a_signed_body_under_a_new_id_is_a_replay_and_removed_targets_are_given_up() {
    for (store, _d) in backends("hookreplay").await {
        let b = store.backend();
        let hooks = store.hooks();
        let t = |name| NewTarget {
            name,
            order_key: None,
            give_up_at: 9_000,
        };
        let first = NewDelivery {
            also_seen: Some("sha256:abc"),
            ..delivery("whd_a", "id-1", "acme/api", 1_000)
        };
        assert!(matches!(
            hooks
                .accept(&first, &[t("h/kept"), t("h/gone")], 0)
                .await
                .unwrap(),
            Accepted::New(_)
        ));
        // The same body under another id: a replay.
        let again = NewDelivery {
            also_seen: Some("sha256:abc"),
            ..delivery("whd_b", "id-2", "acme/api", 1_001)
        };
        assert_eq!(
            hooks.accept(&again, &[t("h/kept")], 0).await.unwrap(),
            Accepted::Duplicate,
            "{b}"
        );
        // Nothing of the refused one was kept, its id included.
        let other = NewDelivery {
            also_seen: Some("sha256:def"),
            ..delivery("whd_c", "id-2", "acme/api", 1_002)
        };
        assert!(
            matches!(
                hooks.accept(&other, &[t("h/kept")], 0).await.unwrap(),
                Accepted::New(_)
            ),
            "{b}"
        );
        // "h/gone" left the configuration: its row is given up once past its time (another
        // node may still know the target until then), "h/kept"'s are not.
        assert_eq!(
            hooks
                .abandon_others(&["h/kept".to_owned()], 1_010)
                .await
                .unwrap(),
            0,
            "{b}"
        );
        assert_eq!(
            hooks
                .abandon_others(&["h/kept".to_owned()], 9_001)
                .await
                .unwrap(),
            1,
            "{b}"
        );
        let dead = hooks
            .list(&AttemptFilter {
                state: Some("dead"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{b}");
        assert_eq!(dead[0].target, "h/gone", "{b}");
        // A delivery is pruned once every row finished before the cut-off, not when it came.
        for c in hooks
            .claim_due("h/kept", "w", 1_020, 1_050, 10)
            .await
            .unwrap()
        {
            hooks
                .finish(&c, &Finish::Delivered { status: 200 }, 5_000)
                .await
                .unwrap();
        }
        assert_eq!(
            hooks.prune(4_000, 0).await.unwrap(),
            0,
            "{b}: finished at 5_000"
        );
        assert_eq!(
            hooks.prune(6_000, 0).await.unwrap(),
            1,
            "{b}: whd_a's dead row was given up at 9_001"
        );
        assert_eq!(hooks.prune(10_000, 0).await.unwrap(), 1, "{b}");
    }
}
