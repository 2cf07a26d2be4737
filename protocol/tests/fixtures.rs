//! Golden fixtures and PROTOCOL.md, checked against the codec.
//!
//! Every file in `tests/fixtures/client/` decodes with [`decode_client`] and every file
//! in `tests/fixtures/server/` with [`decode_server`]; re-encoding gives the same JSON
//! value as the file, or as `tests/fixtures/canonical/<dir>/<name>.json` when the
//! canonical encoding differs (the POC packet's `multicast` becomes `groups`, `false`
//! and empty fields are omitted). The examples and tables of `PROTOCOL.md` are checked
//! too, so the document cannot drift from the code.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use warren_protocol::{
    decode_client, decode_server, encode, ClientFrame, CloseCode, ErrorCode, CLIENT_TYPES,
    SERVER_TYPES,
};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(side: &str) -> Vec<(String, String)> {
    let dir = crate_dir().join("tests/fixtures").join(side);
    let mut out: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, read(&path))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn value(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

/// The JSON value a fixture must re-encode to.
fn expected(side: &str, name: &str, text: &str) -> Value {
    let canonical = crate_dir()
        .join("tests/fixtures/canonical")
        .join(side)
        .join(format!("{name}.json"));
    if canonical.exists() {
        value(&read(&canonical), &canonical.display().to_string())
    } else {
        value(text, name)
    }
}

fn type_of(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text).ok()?["type"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn every_client_fixture_round_trips_to_the_same_json() {
    for (name, text) in fixtures("client") {
        let frame = decode_client(&text).unwrap_or_else(|e| panic!("client/{name}: {e}"));
        let encoded = encode(&frame);
        assert_eq!(
            value(&encoded, &name),
            expected("client", &name, &text),
            "client/{name} re-encoded as {encoded}"
        );
        // Encoding is stable: our own output decodes and re-encodes byte for byte.
        assert_eq!(
            encode(&decode_client(&encoded).unwrap()),
            encoded,
            "client/{name}"
        );
    }
}

#[test]
fn every_server_fixture_round_trips_to_the_same_json() {
    for (name, text) in fixtures("server") {
        let frame = decode_server(&text).unwrap_or_else(|e| panic!("server/{name}: {e}"));
        let encoded = encode(&frame);
        assert_eq!(
            value(&encoded, &name),
            expected("server", &name, &text),
            "server/{name} re-encoded as {encoded}"
        );
        assert_eq!(
            encode(&decode_server(&encoded).unwrap()),
            encoded,
            "server/{name}"
        );
    }
}

#[test]
fn every_frame_type_has_a_fixture() {
    let client: Vec<_> = fixtures("client")
        .iter()
        .filter_map(|(_, t)| type_of(t))
        .collect();
    for kind in CLIENT_TYPES {
        assert!(
            client.iter().any(|k| k == kind),
            "no client fixture of type {kind}"
        );
    }
    let server: Vec<_> = fixtures("server")
        .iter()
        .filter_map(|(_, t)| type_of(t))
        .collect();
    for kind in SERVER_TYPES {
        assert!(
            server.iter().any(|k| k == kind),
            "no server fixture of type {kind}"
        );
    }
    let pocs: Vec<_> = fixtures("client")
        .into_iter()
        .filter_map(|(_, t)| match decode_client(&t).unwrap() {
            ClientFrame::Poc(p) => Some(p.packet_action),
            _ => None,
        })
        .collect();
    assert!(pocs.contains(&warren_protocol::PocAction::Publish));
    assert!(pocs.contains(&warren_protocol::PocAction::Consume));
}

#[test]
fn message_bytes_with_unusual_spacing_and_numbers_are_kept_exactly() {
    let raw = r#"{"b": 1.50, "a":[1,  2,3 ], "e": 1E+2, "big": 12345678901234567890123, "s": "caf\u00e9 \"q\""}"#;
    let text = read(&crate_dir().join("tests/fixtures/client/publish_raw_payload.json"));
    assert!(text.contains(raw), "the fixture holds the payload verbatim");
    let ClientFrame::Publish(publish) = decode_client(&text).unwrap() else {
        panic!("publish_raw_payload is not a publish")
    };
    assert_eq!(publish.message.get(), raw);
    assert!(encode(&ClientFrame::Publish(publish)).contains(raw));
}

/// `(section, heading, json)` for every ```json block of PROTOCOL.md.
fn doc_examples(doc: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let (mut section, mut heading) = (String::new(), String::new());
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match &mut block {
            Some(body) if line.trim_start().starts_with("```") => {
                out.push((section.clone(), heading.clone(), std::mem::take(body)));
                block = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None if line.trim_start().starts_with("```json") => block = Some(String::new()),
            None if line.starts_with("## ") => {
                section = line[3..].trim().to_string();
                heading.clear();
            }
            None if line.starts_with("### ") => heading = line[4..].trim().to_string(),
            None => {}
        }
    }
    out
}

fn protocol_md() -> String {
    read(&crate_dir().join("PROTOCOL.md"))
}

#[test]
fn every_frame_example_in_protocol_md_decodes() {
    let examples = doc_examples(&protocol_md());
    let mut checked = 0;
    for (section, heading, json) in &examples {
        let result = match section.as_str() {
            "Client frames" => decode_client(json).map(|f| f.kind()),
            "Server frames" => decode_server(json).map(|f| f.kind()),
            _ => continue,
        };
        let kind = result.unwrap_or_else(|e| panic!("{section} / {heading}: {e}\n{json}"));
        assert!(
            heading.contains(&format!("`{kind}`")) || kind == "poc",
            "{section} / {heading}: example is a `{kind}` frame"
        );
        checked += 1;
    }
    assert!(
        checked >= CLIENT_TYPES.len() + SERVER_TYPES.len(),
        "only {checked} examples"
    );
}

#[test]
fn every_frame_type_has_a_heading_and_an_example_in_protocol_md() {
    let examples = doc_examples(&protocol_md());
    for (section, kinds) in [
        ("Client frames", CLIENT_TYPES),
        ("Server frames", SERVER_TYPES),
    ] {
        for kind in kinds {
            assert!(
                examples
                    .iter()
                    .any(|(s, h, _)| s == section && h.contains(&format!("`{kind}`"))),
                "PROTOCOL.md has no example of `{kind}` under {section}"
            );
        }
    }
}

fn table_rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[test]
fn protocol_md_lists_every_error_code_with_its_retry_flag() {
    let rows = table_rows(&protocol_md());
    for code in ErrorCode::ALL {
        let name = format!("`{}`", code.as_str());
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&name))
            .unwrap_or_else(|| panic!("PROTOCOL.md has no error-code row for {name}"));
        assert_eq!(
            row.get(1).map(String::as_str),
            Some(yes_no(code.retry())),
            "retry of {name}"
        );
    }
}

#[test]
fn protocol_md_lists_every_close_code_with_its_reconnect_flag() {
    let rows = table_rows(&protocol_md());
    for close in CloseCode::ALL {
        let number = close.code().to_string();
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&number))
            .unwrap_or_else(|| panic!("PROTOCOL.md has no close-code row for {number}"));
        assert_eq!(
            row.get(1),
            Some(&format!("`{}`", close.as_str())),
            "name of {number}"
        );
        assert_eq!(
            row.get(2).map(String::as_str),
            Some(yes_no(close.reconnect())),
            "reconnect of {number}"
        );
    }
}
