//! The `.qci.toml` parser. The file is in the exported tree, so the dev VM
//! writes it and dom0 parses it before running anything.
//!
//! An accepted pipeline has at least one step; every step has a unique name
//! that is safe in a log line (`[A-Za-z0-9_.-]`, 1 to 32 characters), a
//! non-zero timeout, and environment names a shell accepts; its artifact
//! patterns are relative, with no `..` component and no control character,
//! 32 at most. Written back as TOML (timeouts in humantime's words), it
//! parses to the same pipeline.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_core::pipeline::Pipeline;
use toml::{Table, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pipeline) = Pipeline::parse(text) else {
        return;
    };
    assert!(!pipeline.steps.is_empty());
    for (i, step) in pipeline.steps.iter().enumerate() {
        assert!((1..=32).contains(&step.name.len()), "{:?}", step.name);
        assert!(
            step.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
            "{:?}",
            step.name
        );
        assert!(
            pipeline.steps[..i].iter().all(|s| s.name != step.name),
            "step {:?} twice",
            step.name
        );
        assert!(!step.timeout.is_zero());
        for name in step.env.keys() {
            let mut bytes = name.bytes();
            assert!(
                bytes
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "environment name {name:?}"
            );
        }
    }

    let patterns: Vec<&str> = pipeline.artifacts.patterns().map(|p| p.as_str()).collect();
    assert!(patterns.len() <= qci_core::artifacts::MAX_PATTERNS);
    for pattern in patterns {
        assert!(
            !pattern.is_empty()
                && !pattern.starts_with('/')
                && pattern.len() <= qci_core::artifacts::MAX_PATTERN_BYTES
                && !pattern.chars().any(char::is_control)
                && !pattern.split('/').any(|c| c == ".."),
            "pattern {pattern:?}"
        );
    }

    let text = to_toml(&pipeline);
    let back =
        Pipeline::parse(&text).unwrap_or_else(|e| panic!("{text}\ndoes not parse back: {e}"));
    assert_eq!(back, pipeline);
});

fn to_toml(pipeline: &Pipeline) -> String {
    let steps = pipeline
        .steps
        .iter()
        .map(|step| {
            let env: Table = step
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            let mut table = Table::new();
            table.insert("name".into(), step.name.as_str().into());
            table.insert("command".into(), step.command.as_str().into());
            let timeout = humantime::format_duration(step.timeout).to_string();
            table.insert("timeout".into(), timeout.into());
            table.insert("env".into(), env.into());
            Value::from(table)
        })
        .collect::<Vec<_>>();
    let mut top = Table::new();
    let qubes: Vec<Value> = pipeline.qubes.iter().map(|q| q.as_str().into()).collect();
    top.insert("qubes".into(), qubes.into());
    top.insert("steps".into(), steps.into());
    let list = |patterns: &[qci_core::artifacts::Pattern]| -> Vec<Value> {
        patterns.iter().map(|p| p.as_str().into()).collect()
    };
    let mut artifacts = Table::new();
    artifacts.insert("paths".into(), list(&pipeline.artifacts.paths).into());
    artifacts.insert("reports".into(), list(&pipeline.artifacts.reports).into());
    top.insert("artifacts".into(), artifacts.into());
    toml::to_string(&top).expect("a pipeline serializes")
}
