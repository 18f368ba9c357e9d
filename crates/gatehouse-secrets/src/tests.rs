//! The broker on both backends (SQLite in a file, a real PostgreSQL), on an injected clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use gatehouse_core::ManualClock;
use gatehouse_store::StoreOptions;
use gatehouse_testkit::{Postgres, TempDir};

use super::*;

const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

struct Backend {
    store: Store,
    name: &'static str,
    dir: TempDir,
    pg_db: Option<String>,
}

async fn backends(test: &str) -> Vec<Backend> {
    let dir = TempDir::new(&format!("secrets-{test}"));
    let opts = StoreOptions::default();
    let lite = Store::sqlite(&dir.path().join("store.db"), &opts)
        .await
        .unwrap();
    let db = format!("s_{test}");
    let url = Postgres::shared().create_database(&db);
    let pg = Store::postgres(&url, &opts).await.unwrap();
    vec![
        Backend {
            store: lite,
            name: "sqlite",
            dir,
            pg_db: None,
        },
        Backend {
            store: pg,
            name: "postgres",
            dir: TempDir::new(&format!("secrets-{test}-pg")),
            pg_db: Some(db),
        },
    ]
}

fn key(text: &str) -> MasterKey {
    MasterKey::from_text(text).unwrap()
}

fn broker(store: &Store, keys: MasterKeys, clock: Arc<ManualClock>) -> Broker {
    Broker::new(
        store.clone(),
        Arc::new(keys),
        clock,
        BrokerSettings {
            max_versions: 3,
            retention: 7 * DAY,
            lease_ttl: 3600,
            push_retention: 30 * DAY,
        },
    )
}

fn put<'a>(path: &'a str, value: &'a [u8]) -> Put<'a> {
    Put {
        path,
        value,
        tags: None,
        not_before: None,
        expires_at: None,
        max_versions: None,
        actor: "cli:test",
        expect: Expect::Anything,
    }
}

async fn value(b: &Broker, path: &str, v: Option<i64>) -> Result<Vec<u8>, SecretError> {
    b.get(path, v).await.map(|(v, _)| v.expose().to_vec())
}

#[tokio::test]
async fn versions_are_kept_up_to_the_limit_and_tags_travel_with_the_secret() {
    let t = MasterKey::generate_text().unwrap();
    for be in backends("versions").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = broker(&be.store, MasterKeys::new(key(&t), vec![]), clock.clone());
        let tags: BTreeMap<String, String> = [("team".to_owned(), "payments".to_owned())].into();
        let first = b
            .put(&Put {
                tags: Some(tags.clone()),
                ..put("prod/acme/api/db-password", b"one")
            })
            .await
            .unwrap();
        assert_eq!(first, 1, "{n}");
        for (i, v) in [b"two".as_slice(), b"three", b"four"].iter().enumerate() {
            assert_eq!(
                b.put(&put("prod/acme/api/db-password", v)).await.unwrap(),
                i as i64 + 2,
                "{n}"
            );
        }
        assert_eq!(
            value(&b, "prod/acme/api/db-password", None).await.unwrap(),
            b"four",
            "{n}"
        );
        assert_eq!(
            value(&b, "prod/acme/api/db-password", Some(2))
                .await
                .unwrap(),
            b"two",
            "{n}"
        );
        // Three kept: version 1 is gone.
        let kept: Vec<i64> = b
            .versions("prod/acme/api/db-password")
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(kept, [4, 3, 2], "{n}");
        assert!(
            matches!(
                value(&b, "prod/acme/api/db-password", Some(1)).await,
                Err(SecretError::NotFound(_))
            ),
            "{n}"
        );
        let info = b.info("prod/acme/api/db-password").await.unwrap();
        assert_eq!(info.tags, tags, "{n}: tags kept by a put without tags");
        assert_eq!(info.latest, 4, "{n}");
        // Sixteen tags are refused, fifteen taken.
        let many = |k: usize| -> BTreeMap<String, String> {
            (0..k).map(|i| (format!("t{i}"), "v".to_owned())).collect()
        };
        assert!(
            matches!(
                b.set_tags("prod/acme/api/db-password", &Expect::Anything, &many(16))
                    .await,
                Err(SecretError::Invalid(_))
            ),
            "{n}"
        );
        b.set_tags("prod/acme/api/db-password", &Expect::Anything, &many(15))
            .await
            .unwrap();
        // A write into a secret whose tags are not what the caller was allowed for, or into one
        // that appeared meanwhile, is refused, and writes nothing.
        let e = b
            .put(&Put {
                expect: Expect::Tagged(tags.clone()),
                ..put("prod/acme/api/db-password", b"x")
            })
            .await
            .unwrap_err();
        assert!(matches!(e, SecretError::Changed(_)), "{n}: {e}");
        let e = b
            .put(&Put {
                expect: Expect::Absent,
                ..put("prod/acme/api/db-password", b"x")
            })
            .await
            .unwrap_err();
        assert!(matches!(e, SecretError::Changed(_)), "{n}: {e}");
        assert_eq!(
            b.info("prod/acme/api/db-password").await.unwrap().latest,
            4,
            "{n}"
        );
        let e = b
            .set_tags(
                "prod/acme/api/db-password",
                &Expect::Tagged(tags.clone()),
                &tags,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, SecretError::Changed(_)), "{n}: {e}");
        // list shows paths under a prefix, never values.
        b.put(&put("prod/acme/web/key", b"w")).await.unwrap();
        b.put(&put("staging/acme/api/db-password", b"s"))
            .await
            .unwrap();
        let listed: Vec<String> = b
            .list("prod/", false)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(
            listed,
            ["prod/acme/api/db-password", "prod/acme/web/key"],
            "{n}"
        );
        let debug = format!("{:?}", b.list("", false).await.unwrap());
        assert!(!debug.contains("four"), "{n}: a value in a listing");
        // Paths that are not paths.
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "a/./b",
            "a b",
            "a/\u{0}",
            &"x".repeat(513),
        ] {
            assert!(
                matches!(b.put(&put(bad, b"v")).await, Err(SecretError::Invalid(_))),
                "{n}: {bad:?}"
            );
        }
    }
}

#[tokio::test]
async fn not_before_expiry_and_the_enabled_flag_are_enforced() {
    let t = MasterKey::generate_text().unwrap();
    for be in backends("window").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = broker(&be.store, MasterKeys::new(key(&t), vec![]), clock.clone());
        b.put(&Put {
            not_before: Some(T0 + 60),
            expires_at: Some(T0 + 3600),
            ..put("ci/token", b"v1")
        })
        .await
        .unwrap();
        assert!(
            matches!(
                value(&b, "ci/token", None).await,
                Err(SecretError::NotYetValid { .. })
            ),
            "{n}"
        );
        clock.set(T0 + 60);
        assert_eq!(value(&b, "ci/token", None).await.unwrap(), b"v1", "{n}");
        clock.set(T0 + 3600);
        let e = value(&b, "ci/token", None).await.unwrap_err();
        assert!(matches!(e, SecretError::Expired { .. }), "{n}: {e}");
        assert!(!e.is_server_error());
        // A new version is readable; disabling it stops that, enabling brings it back.
        b.put(&put("ci/token", b"v2")).await.unwrap();
        assert_eq!(value(&b, "ci/token", None).await.unwrap(), b"v2", "{n}");
        assert_eq!(
            b.set_enabled("ci/token", None, false).await.unwrap(),
            2,
            "{n}"
        );
        assert!(
            matches!(
                value(&b, "ci/token", None).await,
                Err(SecretError::Disabled { version: 2, .. })
            ),
            "{n}"
        );
        b.set_enabled("ci/token", Some(2), true).await.unwrap();
        assert_eq!(value(&b, "ci/token", None).await.unwrap(), b"v2", "{n}");
        assert!(
            matches!(
                b.set_enabled("ci/token", Some(9), false).await,
                Err(SecretError::NotFound(_))
            ),
            "{n}"
        );
        assert!(matches!(
            b.put(&Put {
                not_before: Some(10),
                expires_at: Some(5),
                ..put("ci/x", b"v")
            })
            .await,
            Err(SecretError::Invalid(_))
        ));
        // Rotation writes a random value the caller never sees.
        let v = b
            .rotate("ci/token", 32, "cli:test", &Expect::Anything)
            .await
            .unwrap();
        assert_eq!(v, 3, "{n}");
        let rotated = value(&b, "ci/token", None).await.unwrap();
        assert_eq!(rotated.len(), 43, "{n}: 32 bytes in base64url");
    }
}

#[tokio::test]
async fn a_deleted_secret_is_unreadable_recoverable_until_purged_and_then_gone() {
    let t = MasterKey::generate_text().unwrap();
    for be in backends("delete").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = broker(&be.store, MasterKeys::new(key(&t), vec![]), clock.clone());
        b.put(&put("a/b", b"one")).await.unwrap();
        b.put(&put("a/b", b"two")).await.unwrap();
        assert!(
            matches!(b.purge("a/b").await, Err(SecretError::Invalid(_))),
            "{n}: purge of a live secret"
        );
        let purge_at = b.delete("a/b", "cli:test").await.unwrap();
        assert_eq!(purge_at, T0 + 7 * DAY, "{n}");
        assert!(
            matches!(value(&b, "a/b", None).await, Err(SecretError::Deleted(_))),
            "{n}"
        );
        assert!(
            matches!(b.put(&put("a/b", b"x")).await, Err(SecretError::Deleted(_))),
            "{n}"
        );
        assert!(
            matches!(b.delete("a/b", "x").await, Err(SecretError::Deleted(_))),
            "{n}"
        );
        assert_eq!(b.list("", true).await.unwrap().len(), 1, "{n}");
        assert!(b.list("", false).await.unwrap().is_empty(), "{n}");
        b.recover("a/b").await.unwrap();
        assert_eq!(
            value(&b, "a/b", Some(1)).await.unwrap(),
            b"one",
            "{n}: every version back"
        );
        assert_eq!(value(&b, "a/b", None).await.unwrap(), b"two", "{n}");
        // Deleted again and left: the retention passes and the sweep purges it.
        b.delete("a/b", "cli:test").await.unwrap();
        clock.set(T0 + 7 * DAY - 1);
        assert_eq!(b.sweep().await.unwrap(), 0, "{n}");
        clock.set(T0 + 7 * DAY);
        assert_eq!(b.sweep().await.unwrap(), 1, "{n}");
        assert!(
            matches!(b.recover("a/b").await, Err(SecretError::NotFound(_))),
            "{n}"
        );
        // The path is free again, from version 1.
        assert_eq!(b.put(&put("a/b", b"new")).await.unwrap(), 1, "{n}");
        // Purged by hand, right after a delete.
        b.delete("a/b", "cli:test").await.unwrap();
        b.purge("a/b").await.unwrap();
        assert!(
            matches!(b.info("a/b").await, Err(SecretError::NotFound(_))),
            "{n}"
        );
        assert!(
            be.store.secrets().versions("a/b").await.unwrap().is_empty(),
            "{n}: versions purged too"
        );
    }
}

#[tokio::test]
async fn the_store_holds_no_value_in_clear() {
    let t = MasterKey::generate_text().unwrap();
    let needle = b"correct-horse-battery-staple-7f3a";
    for be in backends("at_rest").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = broker(&be.store, MasterKeys::new(key(&t), vec![]), clock.clone());
        for i in 0..5 {
            b.put(&put(&format!("prod/app{i}/password"), needle))
                .await
                .unwrap();
        }
        b.put(&put("prod/app0/password", needle)).await.unwrap();
        assert_eq!(
            value(&b, "prod/app0/password", None).await.unwrap(),
            needle,
            "{n}"
        );
        let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let hex: String = needle.iter().map(|c| format!("{c:02x}")).collect();
        match be.pg_db.as_deref() {
            None => {
                // Every byte of the database file and its write-ahead log.
                let mut bytes = Vec::new();
                for f in ["store.db", "store.db-wal"] {
                    bytes.extend(std::fs::read(be.dir.path().join(f)).unwrap_or_default());
                }
                assert!(bytes.len() > 4096, "{n}: read the file");
                assert!(!found(&bytes), "{n}: a value in clear on disk");
            }
            Some(db) => {
                // Every row, as PostgreSQL itself writes it out (bytea as hex).
                let pg = Postgres::shared();
                let dump = pg
                    .psql(db, "COPY (SELECT s.*, v.* FROM secrets s JOIN secret_versions v USING (path)) TO STDOUT")
                    .unwrap();
                assert!(dump.contains("prod/app0/password"), "{n}: {dump}");
                assert!(!found(dump.as_bytes()), "{n}: a value in clear");
                assert!(!dump.contains(&hex), "{n}: a value in clear, as hex");
            }
        }
    }
}

#[tokio::test]
async fn a_master_key_rotates_while_reads_go_on() {
    let old = MasterKey::generate_text().unwrap();
    let new = MasterKey::generate_text().unwrap();
    for be in backends("rotation").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let before = broker(&be.store, MasterKeys::new(key(&old), vec![]), clock.clone());
        for i in 0..250 {
            before
                .put(&put(&format!("s/{i:03}"), format!("value-{i}").as_bytes()))
                .await
                .unwrap();
        }
        // A node restarted with the new key, the old one kept as previous.
        let during = Arc::new(broker(
            &be.store,
            MasterKeys::new(key(&new), vec![key(&old)]),
            clock.clone(),
        ));
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let b = during.clone();
                tokio::spawn(async move {
                    let mut reads = 0;
                    for round in 0..3 {
                        for i in (r..250).step_by(4) {
                            let v = value(&b, &format!("s/{i:03}"), None).await.unwrap_or_else(|e| {
                                panic!("read of s/{i:03} in round {round} failed during the rewrap: {e}")
                            });
                            assert_eq!(v, format!("value-{i}").as_bytes());
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        let rewrapped = during.rewrap_all().await.unwrap();
        assert_eq!(rewrapped, (250, 0), "{n}");
        for r in readers {
            assert!(r.await.unwrap() > 0, "{n}");
        }
        assert_eq!(
            during.rewrap_all().await.unwrap(),
            (0, 0),
            "{n}: nothing left"
        );
        // The old key can go now.
        let after = broker(&be.store, MasterKeys::new(key(&new), vec![]), clock.clone());
        assert_eq!(
            value(&after, "s/123", None).await.unwrap(),
            b"value-123",
            "{n}"
        );
        after.put(&put("s/123", b"next")).await.unwrap();
        assert_eq!(value(&after, "s/123", None).await.unwrap(), b"next", "{n}");
        // A node with only the old key cannot read what is rewrapped, and says why.
        let e = value(&before, "s/001", None).await.unwrap_err();
        assert!(matches!(e, SecretError::UnknownMasterKey(_)), "{n}: {e}");
        assert!(e.is_server_error(), "{n}");
    }
}

#[tokio::test]
async fn concurrent_writers_get_distinct_versions_and_lose_nothing() {
    let t = MasterKey::generate_text().unwrap();
    for be in backends("concurrent").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = Arc::new(Broker::new(
            be.store.clone(),
            Arc::new(MasterKeys::new(key(&t), vec![])),
            clock.clone(),
            BrokerSettings {
                max_versions: 100,
                retention: DAY,
                lease_ttl: 3600,
                push_retention: 30 * DAY,
            },
        ));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let b = b.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for i in 0..5 {
                        let v = format!("w{w}-{i}");
                        got.push((b.put(&put("race/x", v.as_bytes())).await.unwrap(), v));
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in writers {
            all.extend(w.await.unwrap());
        }
        let mut versions: Vec<i64> = all.iter().map(|(v, _)| *v).collect();
        versions.sort_unstable();
        assert_eq!(versions, (1..=20).collect::<Vec<_>>(), "{n}");
        for (v, text) in &all {
            assert_eq!(
                value(&b, "race/x", Some(*v)).await.unwrap(),
                text.as_bytes(),
                "{n}: version {v}"
            );
        }
    }
}

#[tokio::test]
async fn an_altered_row_is_refused_as_corrupt_never_read() {
    let t = MasterKey::generate_text().unwrap();
    for be in backends("corrupt").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = broker(&be.store, MasterKeys::new(key(&t), vec![]), clock.clone());
        b.put(&put("a/one", b"1")).await.unwrap();
        b.put(&put("a/two", b"2")).await.unwrap();
        // a/two's wrapped data key copied into a/one's row: bound to its path, it does not open.
        let one_row = be.store.secrets().get("a/one").await.unwrap().unwrap();
        let two_row = be.store.secrets().get("a/two").await.unwrap().unwrap();
        be.store
            .secrets()
            .rewrap(
                "a/one",
                (&one_row.kek, &one_row.dek),
                &two_row.dek,
                &two_row.kek,
            )
            .await
            .unwrap();
        let e = value(&b, "a/one", None).await.unwrap_err();
        assert!(matches!(e, SecretError::Corrupt(_)), "{n}: {e}");
        assert!(e.is_server_error(), "{n}");
        assert!(!e.to_string().contains('2'), "{n}: {e}");
    }
}

#[tokio::test]
async fn a_read_holds_a_lease_no_longer_than_the_credential_and_job_end_revokes_it() {
    let t = MasterKey::generate_text().unwrap();
    for be in backends("leases").await {
        let n = be.name;
        let clock = Arc::new(ManualClock::new(T0));
        let b = broker(&be.store, MasterKeys::new(key(&t), vec![]), clock.clone());
        b.put(&put("prod/acme/api/db", b"v1")).await.unwrap();
        b.put(&Put {
            expires_at: Some(T0 + 600),
            ..put("prod/acme/api/short", b"s")
        })
        .await
        .unwrap();
        let job = "ci.example/acme/api/run/1/job/2";
        let holder = Holder {
            holder: "https://ci.example repo:acme/api",
            token_id: Some("jti-9"),
            job_id: Some(job),
            expires_at: Some(T0 + 900),
        };
        let (v, meta, lease) = b.read("prod/acme/api/db", None, &holder).await.unwrap();
        assert_eq!((v.expose(), meta.version), (b"v1".as_slice(), 1), "{n}");
        check_lease_id(&lease.id).unwrap();
        // The credential ends first: the lease ends with it.
        assert_eq!(lease.expires_at, T0 + 900, "{n}");
        assert_eq!(
            b.lease(&lease.id).await.unwrap(),
            lease,
            "{n}: durable as returned"
        );
        // The version expires first.
        let (_, _, short) = b.read("prod/acme/api/short", None, &holder).await.unwrap();
        assert_eq!(short.expires_at, T0 + 600, "{n}");
        // A credential without an expiry: the broker's own limit.
        let open = Holder {
            job_id: None,
            expires_at: None,
            ..holder
        };
        let (_, _, other) = b.read("prod/acme/api/db", None, &open).await.unwrap();
        assert_eq!(other.expires_at, T0 + 3600, "{n}");
        // A refused read records no lease.
        b.set_enabled("prod/acme/api/db", Some(1), false)
            .await
            .unwrap();
        assert!(
            b.read("prod/acme/api/db", None, &holder).await.is_err(),
            "{n}"
        );
        let of_job = LeaseFilter {
            job_id: Some(job),
            ..LeaseFilter::default()
        };
        assert_eq!(b.leases(&of_job).await.unwrap().len(), 2, "{n}");

        clock.advance(10);
        assert_eq!(b.end_job(job, "job:end").await.unwrap(), 2, "{n}");
        for l in b.leases(&of_job).await.unwrap() {
            assert_eq!(l.revoked_at, Some(T0 + 10), "{n}");
            assert_eq!(l.reason.as_deref(), Some("job_ended"), "{n}");
        }
        assert!(
            b.lease(&other.id).await.unwrap().is_live(T0 + 10),
            "{n}: not the job's"
        );
        assert!(
            b.revoke_lease(&other.id, "me", "exec_ended").await.unwrap(),
            "{n}"
        );
        assert!(
            !b.revoke_lease(&other.id, "me", "again").await.unwrap(),
            "{n}"
        );
        assert!(
            matches!(b.lease("lease_nope").await, Err(SecretError::Invalid(_))),
            "{n}"
        );
        assert!(
            matches!(
                b.lease("lease_00000000000000000000000000000000").await,
                Err(SecretError::NotFound(_))
            ),
            "{n}"
        );
        // Ended leases are swept a day later.
        clock.advance(2 * DAY);
        b.sweep().await.unwrap();
        assert!(
            b.leases(&LeaseFilter::default()).await.unwrap().is_empty(),
            "{n}"
        );
    }
}
