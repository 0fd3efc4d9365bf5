//! `--ktap` and `--junit` end to end: the tiny guest's `ktap=SPEC` mode
//! prints a report, kvmini reads it and ends the VM on its verdict.

mod common;
use common::*;

/// One `<testcase>` of a JUnit file: classname, name, and what it holds
/// (empty for a pass; the `<failure>`, `<skipped>` or `<error>` element).
#[derive(Debug)]
struct Case {
    class: String,
    name: String,
    body: String,
}

/// The testcases of the JUnit file, and the `<testsuites>` element's
/// tests, failures, errors and skipped counts; fails the test if the file
/// is not the shape kvmini writes (an XML declaration, one testsuites
/// element around one testsuite).
fn junit(path: &std::path::Path) -> (Vec<Case>, [u64; 4]) {
    let xml = std::fs::read_to_string(path).expect("--junit wrote the file");
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        "{xml}"
    );
    assert!(
        xml.trim_end().ends_with("</testsuite>\n</testsuites>"),
        "{xml}"
    );
    let head = regex::Regex::new(
        r#"<testsuites name="kvmini ktap" tests="(\d+)" failures="(\d+)" errors="(\d+)" skipped="(\d+)">"#,
    )
    .unwrap();
    let c = head.captures(&xml).expect("a testsuites element");
    let counts = [1, 2, 3, 4].map(|i| c[i].parse().unwrap());
    let case = regex::Regex::new(
        r#"(?s)<testcase classname="([^"]*)" name="([^"]*)"(?:/>|>(.*?)</testcase>)"#,
    )
    .unwrap();
    let cases = case
        .captures_iter(&xml)
        .map(|c| Case {
            class: c[1].to_string(),
            name: c[2].to_string(),
            body: c.get(3).map_or("", |m| m.as_str()).to_string(),
        })
        .collect();
    (cases, counts)
}

fn stderr_has(r: &Run, line: &str) {
    assert!(
        r.stderr.lines().any(|l| l == line),
        "no line {line:?} in stderr:\n{}",
        r.stderr
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn all_pass_ends_at_the_plan_with_status_0_and_a_junit_file() {
    let dir = TempDir::new("ktap-pass");
    let xml = dir.path("results.xml");
    // ktap-end=spin: only the completed plan can end this VM in time.
    let r = kvmini(&[
        "--cmdline",
        "ktap=p(pps)p ktap-end=spin",
        "--ktap",
        "--junit",
        xml.to_str().unwrap(),
        "--timeout",
        "20s",
    ]);
    r.assert_no_panic();
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    stderr_has(&r, "ktap: 4 passed, 0 failed, 1 skipped");
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: ktap: the plan completed with no failure (exit status 0)"
    );
    let (cases, counts) = junit(&xml);
    assert_eq!(counts, [5, 0, 0, 1]);
    let names: Vec<(&str, &str)> = cases.iter().map(|c| (&*c.class, &*c.name)).collect();
    assert_eq!(
        names,
        [
            ("ktap", "case_1"),
            ("suite_2", "case_2_1"),
            ("suite_2", "case_2_2"),
            ("suite_2", "case_2_3"),
            ("ktap", "case_3"),
        ]
    );
    assert!(cases[3]
        .body
        .starts_with("<skipped message=\"ok 3 case_2_3 # SKIP"));
    assert!(cases[0].body.is_empty());
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn first_top_level_failure_ends_with_7_and_its_diagnostic_in_junit() {
    let dir = TempDir::new("ktap-fail");
    let xml = dir.path("results.xml");
    let r = kvmini(&[
        "--cmdline",
        "ktap=pfp ktap-end=spin",
        "--ktap",
        "--junit",
        xml.to_str().unwrap(),
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(7), "{}", r.stderr);
    stderr_has(&r, "ktap: 1 passed, 1 failed, 0 skipped");
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: ktap: not ok 2 case_2 (exit status 7)"
    );
    let (cases, counts) = junit(&xml);
    assert_eq!(counts, [2, 1, 0, 0]);
    assert_eq!(cases[1].name, "case_2");
    assert_eq!(
        cases[1].body,
        "<failure message=\"not ok 2 case_2\">case_2: failed on purpose</failure>"
    );
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn keep_going_runs_the_whole_plan_then_fails() {
    let r = kvmini(&[
        "--cmdline",
        "ktap=pfsfp ktap-end=spin",
        "--ktap",
        "--ktap-keep-going",
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(7), "{}", r.stderr);
    stderr_has(&r, "ktap: 2 passed, 2 failed, 1 skipped");
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: ktap: not ok 2 case_2 (exit status 7)"
    );
    assert!(r.stdout_str().contains("ok 5 case_5\n"), "ran to the end");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn skips_alone_pass() {
    let r = kvmini(&["--cmdline", "ktap=ss", "--ktap"]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    stderr_has(&r, "ktap: 0 passed, 0 failed, 2 skipped");
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn nested_failure_in_kselftest_style_tap13_with_timestamps() {
    let dir = TempDir::new("ktap-nested");
    let xml = dir.path("results.xml");
    let r = kvmini(&[
        "--cmdline",
        "ktap=p(p(pf))p tap13 stamp ktap-end=spin",
        "--ktap",
        "--junit",
        xml.to_str().unwrap(),
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.status, Some(7), "{}", r.stderr);
    stderr_has(&r, "ktap: 3 passed, 1 failed, 0 skipped");
    assert_eq!(
        r.last_stderr_line(),
        "kvmini: ktap: not ok 2 suite_2 (exit status 7)"
    );
    let (cases, _) = junit(&xml);
    let fail = cases
        .iter()
        .find(|c| c.body.starts_with("<failure"))
        .unwrap();
    assert_eq!(fail.name, "case_2_2_2");
    assert!(
        fail.body.contains("case_2_2_2: failed on purpose"),
        "{fail:?}"
    );
}

/// A report cut short: (ktap-end, status, the final line's start).
#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn a_truncated_report_keeps_the_ending_status_and_says_how_far_it_got() {
    let how_far = "report incomplete: 2 of 3 top-level results, the last \"ok 2 case_2\"";
    for (end, status, last) in [
        (
            "fault",
            4,
            "kvmini: guest crashed: triple fault".to_string(),
        ),
        ("spin", 5, "kvmini: timed out".to_string()),
        ("panic", 6, "kvmini: guest kernel panicked".to_string()),
        (
            "poweroff",
            7,
            format!("kvmini: ktap: {how_far}; the guest powered off"),
        ),
        (
            "exit",
            7,
            format!("kvmini: ktap: {how_far}; the guest wrote 0 to the debug-exit port"),
        ),
    ] {
        let dir = TempDir::new("ktap-cut");
        let xml = dir.path("results.xml");
        let r = kvmini(&[
            "--cmdline",
            &format!("ktap=pp!p ktap-end={end}"),
            "--ktap",
            "--junit",
            xml.to_str().unwrap(),
            "--timeout",
            "3s",
        ]);
        if end != "panic" {
            // (The guest's panic is reported with that word.)
            r.assert_no_panic();
        }
        assert_eq!(r.status, Some(status), "ktap-end={end}: {}", r.stderr);
        stderr_has(
            &r,
            &format!("ktap: 2 passed, 0 failed, 0 skipped ({how_far})"),
        );
        assert!(
            r.last_stderr_line().starts_with(&last),
            "ktap-end={end}: {}",
            r.last_stderr_line()
        );
        let (cases, counts) = junit(&xml);
        assert_eq!(counts, [3, 0, 1, 0], "ktap-end={end}");
        let error = cases.last().unwrap();
        assert_eq!(error.name, "report incomplete");
        assert!(
            error.body.starts_with(&format!(
                "<error message=\"{}",
                how_far.replace('"', "&quot;")
            )),
            "{error:?}"
        );
    }
}

#[test]
#[cfg_attr(
    not(kvm_usable),
    ignore = "needs a usable /dev/kvm (set by build.rs; KVMINI_SKIP_KVM_TESTS=1 also skips)"
)]
fn without_ktap_the_report_changes_nothing() {
    let r = kvmini(&["--cmdline", "ktap=f"]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains("ktap:"), "{}", r.stderr);
}
