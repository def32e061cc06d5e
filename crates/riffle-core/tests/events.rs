//! Keeps docs/events.md true: every JSON example in it must parse, every type
//! must have exactly one example, and the type table must match the code and
//! the shipped default routes.

use std::collections::BTreeMap;

use riffle_core::event::{parse_event, Event, EventType, ParseLimits};

const DOC: &str = include_str!("../../../docs/events.md");
const DEFAULT_CONFIG: &str = include_str!("../src/default.toml");

fn json_examples() -> Vec<&'static str> {
    DOC.split("```json\n")
        .skip(1)
        .map(|block| block.split("```").next().expect("unterminated code block"))
        .collect()
}

/// Rows of the "Types and routing" table: type -> (fields, topic, key).
fn type_table() -> BTreeMap<String, (Vec<String>, String, String)> {
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_owned();
    let section = DOC
        .split("## Types and routing")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("docs/events.md has a \"Types and routing\" section");
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        // | type | fields | topic | key | -> 6 pieces with the empty ends.
        .filter(|cells| cells.len() == 6)
        .map(|cells| {
            let fields = cells[2].split(',').map(unquote).collect();
            (
                unquote(cells[1]),
                (fields, unquote(cells[3]), unquote(cells[4])),
            )
        })
        .collect()
}

#[test]
fn every_documented_example_parses_and_round_trips() {
    // Examples are dated 2024-05-01; any later clock accepts them.
    let limits = ParseLimits::new(1_714_600_000_000);
    let mut seen = Vec::new();
    for example in json_examples() {
        let event =
            parse_event(example.as_bytes(), &limits).unwrap_or_else(|e| panic!("{example}: {e}"));
        seen.push(event.event_type());

        let mut binary = Vec::new();
        event.encode(&mut binary);
        let decoded = Event::decode(&binary).unwrap();
        assert_eq!(decoded, event);

        let mut json = Vec::new();
        decoded.write_json(&mut json);
        assert_eq!(parse_event(&json, &limits).unwrap(), event);
    }
    seen.sort();
    assert_eq!(seen, EventType::ALL.to_vec(), "one example per type");
}

#[test]
fn documented_type_table_matches_the_code_and_default_routes() {
    let table = type_table();
    assert_eq!(table.len(), EventType::ALL.len());
    for event_type in EventType::ALL {
        let (fields, topic, key) = &table[event_type.as_str()];
        assert_eq!(fields, event_type.field_names(), "{event_type}");
        assert_eq!(key, event_type.partition_key_field(), "{event_type}");
        let route = format!("{event_type} = \"{topic}\"");
        assert!(
            DEFAULT_CONFIG.lines().any(|line| line.trim() == route),
            "default.toml lacks `{route}`"
        );
    }
}

#[test]
fn documented_error_examples_are_real() {
    let limits = ParseLimits::new(1_714_564_800_000);
    let cases = [
        (r#"{"event_type":"ad_click","#, "invalid json: EOF while parsing a value at line 1 column 25"),
        (
            r#"{"event_type":"ad_click","event_time":"2031-01-01T00:00:00Z","ad_id":"a","user_id":"u","ip":"203.0.113.7","country":"KR"}"#,
            "field \"event_time\": 2031-01-01T00:00:00.000Z is 210427200000 ms in the future (max skew 300000 ms)",
        ),
    ];
    for (input, message) in cases {
        let err = parse_event(input.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.to_string(), message);
        assert!(
            DOC.contains(message),
            "docs/events.md should show `{message}`"
        );
    }
}
