//! Replays the committed fuzz corpus of the library's decoders on stable
//! Rust: every file under `fuzz/corpus/<target>/` goes through the same
//! entry point of `aside::fuzzing` its fuzz target calls, so an input that
//! once crashed a decoder (kept there as a regression file) fails
//! `cargo test` if the crash comes back. A missing or empty corpus is a
//! failure, not a skip.

use std::path::PathBuf;

/// The corpus directory of `target`, from the repository root.
fn corpus_dir(target: &str) -> PathBuf {
    aside_testkit::fuzz_corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), target)
}

fn replay(target: &str, entry: fn(&[u8])) {
    aside_testkit::fuzz_corpus::replay(env!("CARGO_MANIFEST_DIR"), target, entry);
}

#[test]
fn envelope_corpus() {
    replay("envelope", aside::fuzzing::envelope);
}

#[test]
fn codec_json_corpus() {
    replay("codec_json", aside::fuzzing::codec_json);
}

#[test]
fn codec_msgpack_corpus() {
    replay("codec_msgpack", aside::fuzzing::codec_msgpack);
}

#[test]
fn bus_message_corpus() {
    replay("bus_message", aside::fuzzing::bus_message);
}

#[cfg(feature = "memcached")]
#[test]
fn memcached_responses_corpus() {
    replay("memcached_responses", aside::fuzzing::memcached_responses);
}

mod seeds {
    //! The seed corpus of the library's targets, from the real encoders:
    //! `cargo test -p aside --test fuzz_corpus -- --ignored` (re)writes the
    //! `seed-*` files; the fuzzer's own finds sit beside them.

    use aside::bus::Invalidation;
    use aside::envelope::{FLAG_COMPRESSED, FLAG_NEGATIVE, HEADER_LEN, Header, seal};
    use aside::fuzzing::{Address, Role, Sample};
    use aside::{Codec, Json, MessagePack};
    use std::collections::BTreeMap;

    /// A header with fixed times, so the seeds are the same on every run.
    fn header(codec_id: u8, flags: u8) -> Header {
        Header {
            codec_id,
            flags,
            expires_at_ms: 1_800_000_000_000,
            load_time_us: 1234,
        }
    }

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = super::corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed written");
    }

    fn samples() -> Vec<(&'static str, Sample)> {
        let full = Sample {
            id: 1001,
            balance: -250,
            level: 3,
            active: true,
            name: "Ada Lovelace".into(),
            email: Some("ada@example.com".into()),
            tags: vec!["admin".into(), "β-tester".into()],
            counters: BTreeMap::from([("logins".into(), 42), ("posts".into(), 7)]),
            address: Some(Address {
                street: "12 St James's Square".into(),
                postcode: (1, 65535),
            }),
            role: Role::Admin {
                scopes: vec![1, 2, 300],
            },
            avatar: vec![0, 1, 254, 255],
        };
        let bare = Sample {
            id: 0,
            balance: 0,
            level: 0,
            active: false,
            name: String::new(),
            email: None,
            tags: vec![],
            counters: BTreeMap::new(),
            address: None,
            role: Role::Guest,
            avatar: vec![],
        };
        let extremes = Sample {
            id: u64::MAX,
            balance: i64::MIN,
            level: u8::MAX,
            name: "\u{0}\"\\\u{1F600}".into(),
            role: Role::Moderator("mod".into(), 9),
            ..full.clone()
        };
        let member = Sample {
            role: Role::Member(77),
            ..bare.clone()
        };
        vec![
            ("full", full),
            ("bare", bare),
            ("extremes", extremes),
            ("member", member),
        ]
    }

    #[test]
    #[ignore = "writes the seed corpus; run by hand"]
    fn write_seed_corpus() {
        for (name, sample) in samples() {
            let json = Codec::encode(&Json, &sample).expect("JSON");
            let packed = Codec::encode(&MessagePack, &sample).expect("MessagePack");
            write("codec_json", name, &json);
            write("codec_msgpack", name, &packed);
            // MessagePack's array form of a struct, which the decoder also takes.
            write(
                "codec_msgpack",
                &format!("{name}-array"),
                &rmp_serde::to_vec(&sample).expect("MessagePack"),
            );
            write("codec_json", &format!("{name}-truncated"), &json[..json.len() / 2]);
            write(
                "codec_msgpack",
                &format!("{name}-truncated"),
                &packed[..packed.len() / 2],
            );
            write("envelope", &format!("{name}-json"), &seal(&header(1, 0), &json));
            write("envelope", &format!("{name}-msgpack"), &seal(&header(2, 0), &packed));
        }
        write(
            "codec_json",
            "older-fields-and-unknown-ones",
            br#"{"id":1,"balance":-1,"level":1,"active":true,"name":"x","tags":[],"counters":{},"address":null,"role":"Guest","avatar":[],"extra":{"deep":[[[{"a":[1e308,-0.0,null]}]]]}}"#,
        );
        write(
            "codec_json",
            "escapes",
            br#"{"name":"\u00e9\ud83d\ude00\n\"","id":18446744073709551616}"#,
        );

        write("envelope", "negative", &seal(&header(1, FLAG_NEGATIVE), b""));
        write("envelope", "compressed-flag", &seal(&header(1, FLAG_COMPRESSED), b"{}"));
        let good = seal(&header(1, 0), b"{}");
        write("envelope", "short", &good[..HEADER_LEN - 1]);
        for (name, at, byte) in [
            ("bad-magic", 0, 0x5A),
            ("bad-version", 1, 2),
            ("unknown-flags", 3, 0x80),
        ] {
            let mut bad = good.clone();
            bad[at] = byte;
            write("envelope", name, &bad);
        }

        let messages = [
            (
                "one-key",
                Invalidation::new("user:profile", vec!["user:profile:1001".into()], 7),
            ),
            (
                "many-keys",
                Invalidation::new("p", (0..20).map(|i| format!("app:p:{i}")).collect(), u64::MAX),
            ),
            ("no-keys", Invalidation::new("", vec![], 0)),
            (
                "unicode",
                Invalidation::new("naïve:ns", vec!["k:\u{1F600}\"\\".into()], 1),
            ),
        ];
        for (name, message) in messages {
            write("bus_message", name, &serde_json::to_vec(&message).expect("JSON"));
        }
        write(
            "bus_message",
            "another-programs-message",
            br#"{"event":"deploy","version":"1.2.3"}"#,
        );
        write(
            "bus_message",
            "origin-past-u64",
            br#"{"namespace":"n","keys":["k"],"origin":18446744073709551616}"#,
        );
        write("bus_message", "not-json", b"\x00\xffPING");
    }
}
