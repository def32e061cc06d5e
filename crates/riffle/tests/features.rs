//! `riffle features list|check` through the binary.

use riffle_testkit::{run_cli, TestDir};

#[test]
fn list_shows_the_built_in_set() {
    let dir = TestDir::new();
    let table = run_cli(&dir, &["features", "list"], None);
    table.assert_success();
    assert_eq!(table.stdout.lines().count(), 53, "{}", table.stdout);
    let live = table
        .stdout
        .lines()
        .find(|l| l.starts_with("stream_live "))
        .expect("stream_live listed");
    assert!(live.contains("stream") && live.contains(" live "), "{live}");
    let json = run_cli(&dir, &["features", "list", "--json"], None);
    json.assert_success();
    let lines = json.json_lines();
    assert_eq!(lines.len(), 53);
    let growth = lines
        .iter()
        .find(|l| l["name"] == "stream_viewer_growth_5m")
        .unwrap();
    assert_eq!(growth["entity"], "stream");
    assert_eq!(growth["window"], "5m (tiles 1m)");
}

#[test]
fn check_accepts_a_good_file_and_names_the_problem_in_a_bad_one() {
    let dir = TestDir::new();
    let good = dir.scratch("good.toml");
    std::fs::write(
        &good,
        "[[feature]]\nname = \"chat_5m\"\nentity = \"stream\"\nevents = [\"chat_message\"]\naggregation = \"count\"\nwindow = \"5m\"\n",
    )
    .unwrap();
    let out = run_cli(&dir, &["features", "check", good.to_str().unwrap()], None);
    out.assert_success();
    assert!(out.stdout.contains("1 features, valid"), "{}", out.stdout);
    let listed = run_cli(
        &dir,
        &["features", "list", "--file", good.to_str().unwrap()],
        None,
    );
    listed.assert_success();
    assert!(listed.stdout.starts_with("chat_5m "), "{}", listed.stdout);

    let bad = dir.scratch("bad.toml");
    std::fs::write(
        &bad,
        "[[feature]]\nname = \"followers\"\nentity = \"stream\"\nevents = [\"follow\"]\naggregation = \"count\"\n",
    )
    .unwrap();
    let out = run_cli(&dir, &["features", "check", bad.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("feature[0] \"followers\": events: \"follow\" has no stream_id"),
        "{}",
        out.stderr
    );
    let missing = run_cli(&dir, &["features", "check", "/nonexistent/f.toml"], None);
    assert!(!missing.status.success());
    assert!(
        missing.stderr.contains("/nonexistent/f.toml"),
        "{}",
        missing.stderr
    );
}
