//! One test per rule of `qrexec-reference.md` sections 1 and 2: each asserts
//! what a caller sees (allowed where, or denied why), not internals.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/etc/qubes/policy.d/30-test.policy";

fn qube(name: &str, klass: &str) -> Qube {
    Qube {
        name: name.to_string(),
        klass: klass.to_string(),
        ..Qube::default()
    }
}

/// dom0, the dev VM (tagged `ci`), a net qube, a qube with a default
/// disposable template, that template (tagged `dvm`), a template.
fn system() -> System {
    let mut sd_dev = qube("sd-dev", "AppVM");
    sd_dev.tags = vec!["ci".to_string()];
    let mut work = qube("work", "AppVM");
    work.default_dispvm = Some("default-dvm".to_string());
    let mut dvm = qube("default-dvm", "AppVM");
    dvm.template_for_dispvms = true;
    dvm.tags = vec!["dvm".to_string()];
    System {
        qubes: vec![
            qube("dom0", "AdminVM"),
            sd_dev,
            qube("sys-net", "AppVM"),
            work,
            dvm,
            qube("fedora-41", "TemplateVM"),
        ],
    }
}

fn policy(text: &str) -> Policy {
    match Policy::parse_str(text, Path::new(FILE)) {
        Ok(policy) => policy,
        Err(e) => panic!("policy should parse, got: {e}"),
    }
}

/// The message of the syntax error `text` must raise, checked to be on `line`.
fn syntax_error_at(text: &str, line: usize) -> String {
    match Policy::parse_str(text, Path::new(FILE)) {
        Err(PolicyError::Syntax {
            file,
            line: got,
            error,
        }) => {
            assert_eq!(file, Path::new(FILE));
            assert_eq!(got, line, "error on the wrong line: {error}");
            error.to_string()
        }
        Err(other) => panic!("expected a syntax error, got: {other}"),
        Ok(_) => panic!("expected a syntax error for {text:?}"),
    }
}

fn syntax_error(text: &str) -> String {
    syntax_error_at(text, 1)
}

fn call(
    p: &Policy,
    service: &str,
    arg: &str,
    source: &str,
    target: &str,
) -> Result<Resolution, Denied> {
    let req = Request {
        service,
        argument: arg,
        source,
        target,
    };
    p.evaluate(&req, &system())
}

/// Where the call goes; panics if it is denied.
fn allowed(p: &Policy, service: &str, arg: &str, source: &str, target: &str) -> String {
    match call(p, service, arg, source, target) {
        Ok(Resolution::Allow { target, .. }) => target,
        Err(d) => panic!(
            "{service}+{arg} {source} -> {target:?} should be allowed: {}",
            d.reason
        ),
    }
}

/// Why the call is denied; panics if it is allowed.
fn denied(p: &Policy, service: &str, arg: &str, source: &str, target: &str) -> String {
    match call(p, service, arg, source, target) {
        Ok(r) => panic!("{service}+{arg} {source} -> {target:?} should be denied, got {r:?}"),
        Err(d) => d.reason,
    }
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create dir");
    }
    fs::write(path, text).expect("write file");
}

fn load(dirs: &[&Path]) -> Policy {
    match Policy::load_dirs(dirs) {
        Ok(p) => p,
        Err(e) => panic!("policy dirs should load, got: {e}"),
    }
}

/// A machine root with `etc/qubes/policy.d` and `run/qubes/policy.d`.
struct Root {
    _tmp: tempfile::TempDir,
    etc: PathBuf,
    run: PathBuf,
}

fn root() -> Root {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc/qubes/policy.d");
    let run = tmp.path().join("run/qubes/policy.d");
    fs::create_dir_all(&etc).expect("etc");
    fs::create_dir_all(&run).expect("run");
    Root {
        _tmp: tmp,
        etc,
        run,
    }
}

impl Root {
    fn load(&self) -> Policy {
        load(&[&self.run, &self.etc])
    }
}

// ---- line grammar ----

#[test]
fn comments_blank_lines_and_indentation_are_ignored() {
    let p = policy("# header\n\n   # indented comment\n\t qci.Run * sd-dev @adminvm allow  \n");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
}

#[test]
fn inline_comment_is_refused_with_qrexecs_message() {
    let text =
        "# ok\nqci.Status * @anyvm @anyvm deny\nqci.Run * sd-dev @adminvm allow # the dev VM\n";
    assert_eq!(
        syntax_error_at(text, 3),
        "invalid action parameter syntax: '#'"
    );
    let err = Policy::parse_str(text, Path::new(FILE))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("/etc/qubes/policy.d/30-test.policy:3: invalid action parameter syntax: '#'")
    );
}

#[test]
fn fewer_than_five_fields_is_an_error() {
    assert_eq!(
        syntax_error("qci.Run * sd-dev @adminvm"),
        "wrong number of fields"
    );
    assert_eq!(syntax_error("qci.Run"), "wrong number of fields");
}

#[test]
fn service_must_use_the_rpc_charset_without_plus() {
    assert_eq!(
        syntax_error("qci.Run+J1 * sd-dev @adminvm allow"),
        "service 'qci.Run+J1' contains invalid characters: ('+',)"
    );
    assert_eq!(
        syntax_error("qci/Run! * sd-dev @adminvm allow"),
        "service 'qci/Run!' contains invalid characters: ('!', '/')"
    );
    policy("Qci_x.Run-2 * sd-dev @adminvm allow");
}

#[test]
fn argument_needs_a_leading_plus_and_the_rpc_charset() {
    assert_eq!(
        syntax_error("qci.Run J1 sd-dev @adminvm allow"),
        "argument 'J1' does not start with +"
    );
    assert_eq!(
        syntax_error("qci.Run +a/b sd-dev @adminvm allow"),
        "argument '+a/b' contains invalid characters: ('/',)"
    );
    assert_eq!(
        syntax_error("* +J1 sd-dev @adminvm allow"),
        "only * argument allowed for * service"
    );
    policy("qci.Run +a+b.c_d-e sd-dev @adminvm allow\n* * sd-dev @adminvm deny");
}

#[test]
fn lone_plus_matches_only_the_empty_argument() {
    let p = policy("qci.Run + sd-dev @adminvm allow");
    assert_eq!(allowed(&p, "qci.Run", "", "sd-dev", "dom0"), "dom0");
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sd-dev", "dom0"),
        "no matching rule found"
    );
}

#[test]
fn star_argument_matches_any_argument_including_none() {
    let p = policy("qci.Run * sd-dev @adminvm allow");
    assert_eq!(allowed(&p, "qci.Run", "", "sd-dev", "dom0"), "dom0");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
}

#[test]
fn specific_argument_matches_exactly() {
    let p = policy("qci.Run +J1 sd-dev @adminvm allow");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
    assert_eq!(
        denied(&p, "qci.Run", "J10", "sd-dev", "dom0"),
        "no matching rule found"
    );
    assert_eq!(
        denied(&p, "qci.Run", "", "sd-dev", "dom0"),
        "no matching rule found"
    );
}

#[test]
fn star_service_matches_every_service() {
    let p = policy("* * sd-dev @adminvm allow");
    assert_eq!(allowed(&p, "anything.Else", "x", "sd-dev", "dom0"), "dom0");
}

#[test]
fn default_and_dispvm_are_not_valid_sources() {
    assert_eq!(
        syntax_error("qci.Run * @default @adminvm allow"),
        "invalid source token: '@default'"
    );
    assert_eq!(
        syntax_error("qci.Run * @dispvm @adminvm allow"),
        "invalid source token: '@dispvm'"
    );
}

#[test]
fn unknown_keywords_and_empty_prefixes_are_errors() {
    assert_eq!(
        syntax_error("qci.Run * sd-dev @admin allow"),
        "invalid target token: '@admin'"
    );
    assert_eq!(
        syntax_error("qci.Run * @tag: @adminvm allow"),
        "invalid empty @tag: token: '@tag:'"
    );
    assert_eq!(
        syntax_error("qci.Run * sd-dev @dispvm:@type:x allow"),
        "invalid target token: '@dispvm:@type:x'"
    );
}

#[test]
fn every_token_of_the_table_is_accepted_where_qrexec_accepts_it() {
    policy(
        "s * vm @anyvm deny\n\
         s * uuid:4f6b4d2a-0000-4000-8000-000000000001 dom0 deny\n\
         s * * * deny\n\
         s * @anyvm @adminvm deny\n\
         s * @adminvm @default ask\n\
         s * @tag:t @type:AppVM deny\n\
         s * @type:AppVM @tag:t deny\n\
         s * @dispvm:vm @dispvm deny\n\
         s * @dispvm:@tag:t @dispvm:vm deny\n\
         s * vm @dispvm:@tag:t deny\n\
         s * vm @default allow target=dom0\n\
         s * vm @default allow target=@adminvm\n\
         s * vm @default allow target=@dispvm\n\
         s * vm @default allow target=@dispvm:vm\n\
         s * vm @anyvm ask default_target=@dispvm target=vm\n",
    );
}

#[test]
fn keyword_targets_that_qrexec_cannot_redirect_to_are_errors() {
    assert_eq!(
        syntax_error("s * vm @default allow target=@anyvm"),
        "invalid redirect token: '@anyvm'"
    );
    assert_eq!(
        syntax_error("s * vm @anyvm ask default_target=@tag:t"),
        "invalid redirect token: '@tag:t'"
    );
    assert_eq!(
        syntax_error("s * vm @default allow target=@default"),
        "invalid redirect token: '@default'"
    );
    assert_eq!(
        syntax_error("s * vm @default allow target=*"),
        "invalid redirect token: '*'"
    );
}

#[test]
fn actions_take_only_their_own_parameters() {
    assert_eq!(
        syntax_error("s * vm @anyvm permit"),
        "invalid action: permit"
    );
    assert_eq!(
        syntax_error("s * vm dom0 allow default_target=work"),
        "invalid parameters for action Allow: ['default_target=work']"
    );
    assert_eq!(
        syntax_error("s * vm @anyvm deny target=work"),
        "invalid parameters for action Deny: ['target=work']"
    );
    assert_eq!(
        syntax_error("s * vm @anyvm allow color=red"),
        "invalid parameters for action Allow: ['color=red']"
    );
    policy(
        "s * vm @anyvm deny notify=no\n\
         s * vm @anyvm allow target=work user=root notify=yes autostart=no\n\
         s * vm @anyvm ask target=work default_target=work user=u notify=no autostart=yes\n",
    );
}

#[test]
fn booleans_must_be_yes_or_no() {
    assert_eq!(
        syntax_error("s * vm @anyvm allow notify=true"),
        "'notify' is 'true', but can be only 'yes' or 'no'"
    );
    assert_eq!(
        syntax_error("s * vm @anyvm deny autostart=1"),
        "'autostart' is '1', but can be only 'yes' or 'no'"
    );
}

#[test]
fn a_parameter_given_twice_is_an_error() {
    assert_eq!(
        syntax_error("s * vm @anyvm allow user=a user=b"),
        "parameter given twice: 'user'"
    );
}

#[test]
fn allow_to_default_needs_a_target() {
    assert_eq!(
        syntax_error("s * vm @default allow"),
        "allow action for @default rule must specify target= option"
    );
    policy("s * vm @default ask\ns * vm @default deny");
}

// ---- evaluation ----

#[test]
fn first_matching_rule_wins() {
    let p = policy("qci.Run * sd-dev @adminvm deny\nqci.Run * sd-dev @adminvm allow\n");
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sd-dev", "dom0"),
        format!("denied by policy {FILE}:1")
    );
    let p = policy("qci.Run * sd-dev @adminvm allow\nqci.Run * sd-dev @adminvm deny\n");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
}

#[test]
fn no_matching_rule_denies() {
    let p = policy("qci.Status * @anyvm @anyvm deny");
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sd-dev", "dom0"),
        "no matching rule found"
    );
}

#[test]
fn anyvm_does_not_match_dom0() {
    let p = policy("qci.Run * @anyvm @anyvm allow");
    for target in ["dom0", "@adminvm", super::parse::DOM0_UUID] {
        assert_eq!(
            denied(&p, "qci.Run", "J1", "sd-dev", target),
            "no matching rule found",
            "target {target}"
        );
    }
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "sys-net"), "sys-net");
}

#[test]
fn star_matches_dom0_too() {
    let p = policy("qci.Run * * * allow");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "work"), "work");
}

#[test]
fn dom0_adminvm_and_the_zero_uuid_are_the_same_qube() {
    for column in ["dom0", "@adminvm", super::parse::DOM0_UUID] {
        let p = policy(&format!("qci.Run * sd-dev {column} allow"));
        for target in ["dom0", "@adminvm", super::parse::DOM0_UUID] {
            assert_eq!(
                allowed(&p, "qci.Run", "J1", "sd-dev", target),
                "dom0",
                "{column} vs {target}"
            );
        }
        assert_eq!(
            denied(&p, "qci.Run", "J1", "sd-dev", "work"),
            "no matching rule found"
        );
    }
}

#[test]
fn tags_and_types_match_qubes_but_not_the_adminvm_keyword() {
    let p = policy(
        "s * @tag:ci @type:TemplateVM allow\n\
         s * @type:AppVM @tag:dvm allow\n\
         s * @anyvm @type:AdminVM allow\n",
    );
    assert_eq!(allowed(&p, "s", "", "sd-dev", "fedora-41"), "fedora-41");
    assert_eq!(
        denied(&p, "s", "", "sys-net", "fedora-41"),
        "no matching rule found"
    );
    assert_eq!(
        allowed(&p, "s", "", "sys-net", "default-dvm"),
        "default-dvm"
    );
    // qrexec turns a call to dom0 into the keyword @adminvm, no type.
    assert_eq!(
        denied(&p, "s", "", "sys-net", "dom0"),
        "no matching rule found"
    );
}

#[test]
fn a_target_that_does_not_exist_is_treated_as_default() {
    let p = policy("s * @anyvm @default allow target=sd-dev\n");
    for target in [
        "",
        "@default",
        "no-such-qube",
        "uuid:4f6b4d2a-0000-4000-8000-000000000001",
    ] {
        assert_eq!(
            allowed(&p, "s", "", "sys-net", target),
            "sd-dev",
            "target {target:?}"
        );
    }
    // @default matches an @anyvm target column, but allow then has nowhere to go.
    let p = policy("s * @anyvm @anyvm allow\n");
    assert_eq!(
        denied(&p, "s", "", "sys-net", "no-such-qube"),
        format!(
            "policy define 'allow' action at {FILE}:1 but no target is specified by caller or policy"
        )
    );
}

#[test]
fn redirect_sends_the_call_elsewhere() {
    let p = policy("s * sys-net @default allow target=dom0\ns * sd-dev @anyvm allow target=work\n");
    assert_eq!(allowed(&p, "s", "", "sys-net", ""), "dom0");
    assert_eq!(allowed(&p, "s", "", "sd-dev", "sys-net"), "work");
}

#[test]
fn calling_yourself_is_refused() {
    let p = policy("s * @anyvm @default allow target=sys-net\ns * @anyvm @anyvm allow\n");
    assert_eq!(
        denied(&p, "s", "", "sd-dev", "sd-dev"),
        "loopback qrexec connection not supported"
    );
    assert_eq!(
        denied(&p, "s", "", "sys-net", ""),
        "loopback qrexec connection not supported"
    );
}

#[test]
fn deny_names_the_file_and_line() {
    let p = policy("# c\n\nqci.Run * @anyvm @adminvm deny notify=no\n");
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sys-net", "dom0"),
        "denied by policy /etc/qubes/policy.d/30-test.policy:3"
    );
}

#[test]
fn ask_is_denied_without_a_gui_agent() {
    let p = policy("s * @anyvm @anyvm ask default_target=work\ns * @anyvm @anyvm allow\n");
    assert_eq!(
        denied(&p, "s", "", "sd-dev", "work"),
        "ask is not supported without a GUI agent"
    );
}

#[test]
fn unknown_source_is_denied() {
    let p = policy("s * * * allow");
    assert_eq!(
        denied(&p, "s", "", "ghost", "work"),
        "unknown source qube: ghost"
    );
}

#[test]
fn invalid_requested_targets_are_denied() {
    let p = policy("s * * * allow");
    assert_eq!(
        denied(&p, "s", "", "work", "@anyvm"),
        "invalid target: '@anyvm'"
    );
    assert_eq!(denied(&p, "s", "", "work", "*"), "invalid target: '*'");
    assert_eq!(
        denied(&p, "s", "", "work", "@dispvm:sd-dev"),
        "not a template for dispvm: sd-dev"
    );
}

#[test]
fn allow_parameters_reach_the_caller() {
    let p = policy(
        "s * sd-dev work allow user=root notify=yes autostart=no\n\
         s * sd-dev dom0 allow user=root\n\
         s * sd-dev @anyvm allow\n",
    );
    assert_eq!(
        call(&p, "s", "", "sd-dev", "work"),
        Ok(Resolution::Allow {
            target: "work".to_string(),
            user: Some("root".to_string()),
            autostart: false,
            notify: true,
        })
    );
    // qrexec runs dom0 services as the daemon's user whatever user= says.
    assert_eq!(
        call(&p, "s", "", "sd-dev", "dom0"),
        Ok(Resolution::Allow {
            target: "dom0".to_string(),
            user: None,
            autostart: true,
            notify: false,
        })
    );
    assert_eq!(
        call(&p, "s", "", "sd-dev", "sys-net"),
        Ok(Resolution::Allow {
            target: "sys-net".to_string(),
            user: None,
            autostart: true,
            notify: false,
        })
    );
}

#[test]
fn dispvm_targets_resolve_to_the_callers_template() {
    let p = policy(
        "s +tag * @dispvm:@tag:dvm allow\n\
         s +named * @dispvm:default-dvm allow\n\
         s * @anyvm @dispvm allow\n",
    );
    assert_eq!(
        allowed(&p, "s", "", "work", "@dispvm"),
        "@dispvm:default-dvm"
    );
    assert_eq!(
        denied(&p, "s", "", "sys-net", "@dispvm"),
        format!(
            "policy define 'allow' action to @dispvm at {FILE}:3 but no DispVM base is set for this VM"
        )
    );
    assert_eq!(
        allowed(&p, "s", "tag", "work", "@dispvm"),
        "@dispvm:default-dvm"
    );
    assert_eq!(
        allowed(&p, "s", "named", "work", "@dispvm"),
        "@dispvm:default-dvm"
    );
    assert_eq!(
        allowed(&p, "s", "named", "sd-dev", "@dispvm:default-dvm"),
        "@dispvm:default-dvm"
    );
    // sys-net has no default disposable template, so neither rule matches.
    assert!(denied(&p, "s", "named", "sys-net", "@dispvm").starts_with("policy define"));
}

// ---- the project's policy ----

const QCI_POLICY: &str = include_str!("../../../../policy/30-qci.policy");

#[test]
fn qci_policy_lets_only_the_dev_vm_start_jobs() {
    let p = policy(QCI_POLICY);
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "@adminvm"), "dom0");
    assert!(denied(&p, "qci.Run", "J1", "sys-net", "dom0").starts_with("denied by policy"));
    assert!(denied(&p, "qci.Run", "J1", "sys-net", "@adminvm").starts_with("denied by policy"));
    assert!(denied(&p, "qci.Run", "J1", "sys-net", "sd-dev").starts_with("denied by policy"));
}

#[test]
fn qci_policy_keeps_other_qubes_away_from_the_dev_vm_services() {
    let p = policy(QCI_POLICY);
    for service in ["qci.Status", "qci.Export"] {
        assert!(denied(&p, service, "J1", "sys-net", "sd-dev").starts_with("denied by policy"));
    }
}

#[test]
fn without_the_adminvm_line_dom0_is_only_protected_by_no_match() {
    let text: String = QCI_POLICY
        .lines()
        .filter(|l| !(l.contains("@anyvm") && l.contains("@adminvm")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, QCI_POLICY, "the @adminvm deny line should be removed");
    let p = policy(&text);
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sys-net", "dom0"),
        "no matching rule found"
    );
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
}

// ---- files and directories ----

#[test]
fn one_badly_named_policy_file_denies_every_call() {
    let r = root();
    write(&r.etc.join("20-allow.policy"), "* * * * allow\n");
    write(&r.etc.join("30-QCI.policy"), "* * * * allow\n");
    let p = r.load();
    let reason = denied(&p, "qci.Run", "J1", "sd-dev", "dom0");
    assert!(reason.starts_with("invalid filename: "), "{reason}");
    assert!(reason.ends_with("30-QCI.policy"), "{reason}");
}

#[test]
fn files_that_are_not_policy_files_are_ignored() {
    let r = root();
    write(
        &r.etc.join("50-ok.policy"),
        "qci.Run * sd-dev @adminvm allow\n",
    );
    for name in [
        "README",
        "50-ok.policy~",
        ".50-x.policy",
        ".50-x.policy.swp",
        "BAD NAME",
    ] {
        write(&r.etc.join(name), "this is not a policy\n");
    }
    write(&r.etc.join("include/10-deny.policy"), "* * * * deny\n");
    fs::create_dir_all(r.etc.join("40-dir.policy")).expect("dir");
    let p = r.load();
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
}

#[test]
fn files_are_read_in_c_order_of_their_names() {
    let r = root();
    write(
        &r.etc.join("9-allow.policy"),
        "qci.Run * sd-dev @adminvm allow\n",
    );
    write(
        &r.etc.join("10-deny.policy"),
        "qci.Run * sd-dev @adminvm deny\n",
    );
    let p = r.load();
    let reason = denied(&p, "qci.Run", "J1", "sd-dev", "dom0");
    assert!(reason.ends_with("10-deny.policy:1"), "{reason}");
}

#[test]
fn run_shadows_etc_by_name_and_interleaves_by_name() {
    let r = root();
    write(
        &r.etc.join("50-x.policy"),
        "qci.Run * sd-dev @adminvm allow\n",
    );
    write(
        &r.run.join("50-x.policy"),
        "qci.Run * sd-dev @adminvm deny\n",
    );
    write(
        &r.etc.join("40-y.policy"),
        "qci.Status * @anyvm @anyvm deny\n",
    );
    write(
        &r.run.join("60-z.policy"),
        "qci.Status * sd-dev @anyvm allow\n",
    );
    let p = r.load();
    let reason = denied(&p, "qci.Run", "J1", "sd-dev", "dom0");
    assert_eq!(
        reason,
        format!("denied by policy {}:1", r.run.join("50-x.policy").display())
    );
    // /etc's 40 comes before /run's 60.
    let reason = denied(&p, "qci.Status", "J1", "sd-dev", "work");
    assert!(reason.ends_with("40-y.policy:1"), "{reason}");
}

#[test]
fn missing_policy_dirs_are_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = load(&[&tmp.path().join("run"), &tmp.path().join("etc")]);
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sd-dev", "dom0"),
        "no matching rule found"
    );
}

#[test]
fn syntax_errors_in_files_name_the_file_and_line() {
    let r = root();
    write(
        &r.etc.join("30-x.policy"),
        "\nqci.Run * sd-dev @adminvm allow # no\n",
    );
    let err = Policy::load_dirs(&[&r.run, &r.etc])
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err,
        Some(format!(
            "{}:2: invalid action parameter syntax: '#'",
            r.etc.join("30-x.policy").display()
        ))
    );
}

#[test]
fn include_reads_a_file_relative_to_the_policy_dir_in_place() {
    let r = root();
    write(
        &r.etc.join("30-x.policy"),
        "qci.Status * @anyvm @anyvm deny\n!include include/qci\nqci.Run * @anyvm @anyvm deny\n",
    );
    // Nested includes resolve against the policy dir too, not include/.
    write(&r.etc.join("include/qci"), "!include include/qci-run\n");
    write(
        &r.etc.join("include/qci-run"),
        "qci.Run * sd-dev work allow\n",
    );
    let p = r.load();
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "work"), "work");
    assert!(denied(&p, "qci.Status", "J1", "sd-dev", "work").ends_with("30-x.policy:1"));
}

#[test]
fn include_errors() {
    let r = root();
    write(&r.etc.join("30-x.policy"), "!include include/missing\n");
    let err = Policy::load_dirs(&[&r.etc]).err().map(|e| e.to_string());
    assert_eq!(
        err,
        Some(format!(
            "{}:1: not a file: {}",
            r.etc.join("30-x.policy").display(),
            r.etc.join("include/missing").display()
        ))
    );
    assert_eq!(syntax_error("!include a b"), "invalid number of params");
    assert_eq!(syntax_error("!include-dir"), "invalid number of params");
    assert_eq!(
        syntax_error("!include-service s *"),
        "invalid number of params"
    );
    assert_eq!(syntax_error("!compat-4.0 now"), "invalid number of params");
    assert_eq!(syntax_error("!includes x"), "invalid directive");
    let msg = syntax_error("!include-dir /nonexistent/qci-policy-dir");
    assert_eq!(msg, "not a directory: /nonexistent/qci-policy-dir");
}

#[test]
fn include_loops_are_reported_not_followed_forever() {
    let r = root();
    write(&r.etc.join("30-x.policy"), "!include include/a\n");
    write(&r.etc.join("include/a"), "!include include/a\n");
    let err = Policy::load_dirs(&[&r.etc]).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("nested too deep")));
}

#[test]
fn include_dir_reads_the_policy_files_of_a_dir_with_the_same_filter() {
    let r = root();
    write(
        &r.etc.join("30-x.policy"),
        "!include-dir include/qci\n* * * * deny\n",
    );
    write(
        &r.etc.join("include/qci/20-b.policy"),
        "qci.Run * sd-dev dom0 deny\n",
    );
    write(
        &r.etc.join("include/qci/10-a.policy"),
        "qci.Run * sd-dev dom0 allow\n",
    );
    write(&r.etc.join("include/qci/README"), "not policy\n");
    let p = r.load();
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
    assert!(denied(&p, "qci.Status", "J1", "sd-dev", "work").ends_with("30-x.policy:2"));

    write(&r.etc.join("include/qci/Upper.policy"), "\n");
    let p = r.load();
    let reason = denied(&p, "qci.Run", "J1", "sd-dev", "dom0");
    assert!(reason.starts_with("invalid filename: "), "{reason}");
}

#[test]
fn include_service_reads_the_old_syntax_for_one_service() {
    let r = root();
    write(
        &r.etc.join("30-x.policy"),
        "!include-service qci.Run * include/qci.Run\n!include-service qci.Status +ok include/status\n",
    );
    write(
        &r.etc.join("include/qci.Run"),
        "# old syntax\nsd-dev dom0 allow,user=root\n$include:include/qci.Run-more\n",
    );
    write(
        &r.etc.join("include/qci.Run-more"),
        "$anyvm $anyvm allow,target=work\n",
    );
    write(&r.etc.join("include/status"), "$anyvm $anyvm deny\n");
    let p = r.load();
    assert_eq!(allowed(&p, "qci.Run", "J1", "sd-dev", "dom0"), "dom0");
    assert_eq!(allowed(&p, "qci.Run", "J1", "sys-net", "sd-dev"), "work");
    assert_eq!(
        denied(&p, "qci.Run", "J1", "sys-net", "dom0"),
        "no matching rule found"
    );
    assert!(denied(&p, "qci.Status", "ok", "sys-net", "work").ends_with("include/status:1"));
    assert_eq!(
        denied(&p, "qci.Status", "bad", "sys-net", "work"),
        "no matching rule found"
    );
    assert_eq!(
        syntax_error("!include-service qci.Run J1 include/qci.Run"),
        "argument 'J1' does not start with +"
    );
}

#[test]
fn compat_40_reads_the_legacy_dir_in_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc/qubes/policy.d");
    let legacy = tmp.path().join("etc/qubes-rpc/policy");
    write(&etc.join("35-compat.policy"), "!compat-4.0\n");
    write(
        &etc.join("30-user.policy"),
        "qci.Legacy +first sys-net work allow\n",
    );
    write(
        &etc.join("90-default.policy"),
        "qci.Legacy * @anyvm dom0 allow\n",
    );
    write(&legacy.join("qci.Legacy+a"), "sd-dev $adminvm allow\n");
    write(&legacy.join("qci.Legacy+first"), "$anyvm $anyvm deny\n");
    write(
        &legacy.join("qci.Legacy"),
        "$anyvm $anyvm allow,user=root\n",
    );
    write(&legacy.join("qci.Legacy+b.rpmnew"), "$anyvm $anyvm allow\n");
    write(&legacy.join(".qci.Legacy+b"), "$anyvm $anyvm allow\n");
    write(&legacy.join("qci.Legacy+b.swp"), "$anyvm $anyvm allow\n");
    write(&legacy.join("bad name"), "garbage\n");
    let p = load(&[&etc]);

    // 30 comes before 35.
    assert_eq!(
        allowed(&p, "qci.Legacy", "first", "sys-net", "work"),
        "work"
    );
    // The +ARG file, then the implied deny lines.
    assert_eq!(allowed(&p, "qci.Legacy", "a", "sd-dev", "dom0"), "dom0");
    let implied = format!(
        "denied by policy {}:None",
        legacy.join("qci.Legacy+a").display()
    );
    assert_eq!(denied(&p, "qci.Legacy", "a", "sys-net", "work"), implied);
    assert_eq!(denied(&p, "qci.Legacy", "a", "sys-net", "dom0"), implied);
    // Other arguments reach the plain file, which adds no deny.
    assert_eq!(allowed(&p, "qci.Legacy", "b", "sys-net", "work"), "work");
    assert_eq!(allowed(&p, "qci.Legacy", "b", "sys-net", "dom0"), "dom0");
}

#[test]
fn compat_40_without_a_legacy_dir_adds_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc/qubes/policy.d");
    write(&etc.join("35-compat.policy"), "!compat-4.0\n");
    let p = load(&[&etc]);
    assert_eq!(
        denied(&p, "s", "", "sd-dev", "dom0"),
        "no matching rule found"
    );
}
