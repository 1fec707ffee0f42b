//! Reading policy files: file selection, the line grammar, the directives and
//! the legacy (4.0) format, following `parser.py` and `parser_compat.py`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::PolicyError;

/// Beyond this depth an include chain is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 32;

/// A qube designation in a rule, once aliases are folded (`dom0` and the
/// all-zero `uuid:` are `@adminvm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
    /// `*`: anything, dom0 included.
    Wildcard,
    /// `@anyvm`: anything but dom0.
    AnyVm,
    AdminVm,
    /// `@default`: the caller named no (existing) target.
    Default,
    Type(String),
    Tag(String),
    /// `@dispvm`: a new disposable from the caller's `default_dispvm`.
    DispVm,
    /// `@dispvm:VM`
    DispVmTemplate(String),
    /// `@dispvm:@tag:T`
    DispVmTag(String),
    /// A qube name (or a `uuid:` other than dom0's).
    Name(String),
}

/// Where a token stands; qrexec accepts a different set of tokens in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Source,
    Target,
    /// `target=` and `default_target=`.
    Redirect,
    /// What the caller asked for.
    Intended,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Source => "source",
            Place::Target => "target",
            Place::Redirect => "redirect",
            Place::Intended => "intendedtarget",
        }
    }
}

pub(super) const DOM0_UUID: &str = "uuid:00000000-0000-0000-0000-000000000000";

/// Why qrexec refuses a policy line, in qrexec's own words: each variant's
/// message is `parser.py`'s, so an emulated machine refuses a policy with the
/// same text a real dom0 prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// A token not valid where it stands; `place` is qrexec's name for the
    /// column (`source`, `target`, `redirect`, `intendedtarget`).
    #[error("invalid {place} token: {}", py_repr(text))]
    InvalidToken { place: &'static str, text: String },
    /// `@type:`, `@tag:` or `@dispvm:` with nothing after it.
    #[error("invalid empty {prefix} token: {}", py_repr(text))]
    EmptyToken { prefix: &'static str, text: String },
    /// `invalid` lists the offending characters, distinct and sorted.
    #[error(
        "service {} contains invalid characters: {}",
        py_repr(service),
        py_tuple(invalid)
    )]
    ServiceCharacters {
        service: String,
        invalid: Vec<String>,
    },
    #[error(
        "argument {} contains invalid characters: {}",
        py_repr(argument),
        py_tuple(invalid)
    )]
    ArgumentCharacters {
        argument: String,
        invalid: Vec<String>,
    },
    #[error("argument {} does not start with +", py_repr(argument))]
    ArgumentWithoutPlus { argument: String },
    #[error("only * argument allowed for * service")]
    ArgumentForAnyService,
    #[error("invalid action: {action}")]
    Action { action: String },
    /// An action parameter without `=`.
    #[error("invalid action parameter syntax: {}", py_repr(parameter))]
    ParameterSyntax { parameter: String },
    #[error("parameter given twice: {}", py_repr(key))]
    ParameterTwice { key: String },
    /// `notify=` or `autostart=` with a value other than `yes` or `no`.
    #[error(
        "{} is {}, but can be only 'yes' or 'no'",
        py_repr(key),
        py_repr(value)
    )]
    NotYesOrNo { key: String, value: String },
    /// A parameter `action` does not take; qrexec lists all of the line's.
    #[error("invalid parameters for action {action}: {}", py_list(parameters))]
    ParametersForAction {
        action: &'static str,
        parameters: Vec<String>,
    },
    #[error("allow action for @default rule must specify target= option")]
    DefaultWithoutTarget,
    #[error("wrong number of fields")]
    FieldCount,
    /// A directive with too many or too few parameters.
    #[error("invalid number of params")]
    ParameterCount,
    #[error("invalid directive")]
    Directive,
    /// `!include-dir` of something that is not a directory.
    #[error("not a directory: {}", .0.display())]
    NotADirectory(PathBuf),
    /// An include of something that is not a file.
    #[error("not a file: {}", .0.display())]
    NotAFile(PathBuf),
    /// qrexec itself would follow an include loop until Python's recursion
    /// limit; this stops it at `MAX_INCLUDE_DEPTH` includes.
    #[error("includes nested too deep (an include loop?)")]
    TooDeep,
}

/// Parses a token valid at `place`; the error is qrexec's message.
pub(super) fn parse_token(text: &str, place: Place) -> Result<Token, SyntaxError> {
    use Place::*;
    if text == "dom0" || text == DOM0_UUID || text == "@adminvm" {
        // AdminVM is valid in every place.
        return Ok(Token::AdminVm);
    }
    if !text.starts_with('@') && text != "*" {
        return Ok(Token::Name(text.to_string()));
    }
    let invalid = || SyntaxError::InvalidToken {
        place: place.name(),
        text: text.to_string(),
    };
    let exact = match text {
        "*" => Some((Token::Wildcard, [Source, Target].as_slice())),
        "@anyvm" => Some((Token::AnyVm, [Source, Target].as_slice())),
        "@default" => Some((Token::Default, [Target, Intended].as_slice())),
        "@dispvm" => Some((Token::DispVm, [Target, Redirect, Intended].as_slice())),
        _ => None,
    };
    if let Some((token, places)) = exact {
        return if places.contains(&place) {
            Ok(token)
        } else {
            Err(invalid())
        };
    }
    // Same order as qrexec tries them: "@dispvm:@tag:T" first fails as a
    // "@dispvm:" token because its value starts with "@".
    type Make = fn(String) -> Token;
    let prefixes: [(&str, &[Place], Make); 4] = [
        ("@type:", &[Source, Target], Token::Type),
        ("@tag:", &[Source, Target], Token::Tag),
        (
            "@dispvm:",
            &[Source, Target, Redirect, Intended],
            Token::DispVmTemplate,
        ),
        ("@dispvm:@tag:", &[Source, Target], Token::DispVmTag),
    ];
    for (prefix, places, make) in prefixes {
        if !places.contains(&place) {
            continue;
        }
        if let Some(value) = text.strip_prefix(prefix) {
            if value.is_empty() {
                return Err(SyntaxError::EmptyToken {
                    prefix,
                    text: text.to_string(),
                });
            }
            if value.starts_with('@') {
                continue;
            }
            return Ok(make(value.to_string()));
        }
    }
    Err(invalid())
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    Allow {
        target: Option<Token>,
        user: Option<String>,
        notify: bool,
        autostart: bool,
    },
    Deny,
    Ask,
}

/// One policy line. `service`/`argument` are `None` for `*`; the argument
/// keeps its leading `+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    pub service: Option<String>,
    pub argument: Option<String>,
    pub source: Token,
    pub target: Token,
    pub action: Action,
    pub file: PathBuf,
    /// `None` for the deny rules `!compat-4.0` adds on its own.
    pub line: Option<usize>,
}

impl Rule {
    /// `file:line` as qrexec prints it in deny reasons.
    pub fn location(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{}", self.file.display(), line),
            None => format!("{}:None", self.file.display()),
        }
    }
}

/// A syntax error at `file:line`.
fn syntax(file: &Path, line: usize, error: SyntaxError) -> PolicyError {
    PolicyError::Syntax {
        file: file.to_path_buf(),
        line,
        error,
    }
}

fn io_error(path: &Path, source: io::Error) -> PolicyError {
    PolicyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The charset of service names (without `+`) and arguments (with it):
/// qrexec's `RPCNAME_ALLOWED_CHARSET`, which the daemon's `sanitize_name`
/// also keeps.
pub(crate) fn rpc_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

/// `validate_service_and_argument`: `*` becomes `None`.
fn service_and_argument(
    service: &str,
    argument: &str,
) -> Result<(Option<String>, Option<String>), SyntaxError> {
    let service = (service != "*").then_some(service);
    if let Some(service) = service {
        let bad = invalid_chars(service, |c| rpc_char(c) && c != '+');
        if !bad.is_empty() {
            return Err(SyntaxError::ServiceCharacters {
                service: service.to_string(),
                invalid: bad,
            });
        }
    }
    let argument = (argument != "*").then_some(argument);
    if let Some(argument) = argument {
        let bad = invalid_chars(argument, rpc_char);
        if !bad.is_empty() {
            return Err(SyntaxError::ArgumentCharacters {
                argument: argument.to_string(),
                invalid: bad,
            });
        }
        if !argument.starts_with('+') {
            return Err(SyntaxError::ArgumentWithoutPlus {
                argument: argument.to_string(),
            });
        }
        if service.is_none() {
            return Err(SyntaxError::ArgumentForAnyService);
        }
    }
    Ok((service.map(str::to_string), argument.map(str::to_string)))
}

/// The distinct characters of `s` that fail `ok`, sorted.
fn invalid_chars(s: &str, ok: impl Fn(char) -> bool) -> Vec<String> {
    let mut bad: Vec<char> = s.chars().filter(|&c| !ok(c)).collect();
    bad.sort_unstable();
    bad.dedup();
    bad.into_iter().map(String::from).collect()
}

/// Builds a rule from its fields (`Rule.__init__`): checks run in qrexec's
/// order so the first error reported is qrexec's.
fn make_rule(
    fields: [&str; 5],
    params: &[&str],
    file: &Path,
    line: Option<usize>,
) -> Result<Rule, SyntaxError> {
    let [service, argument, source, target, action] = fields;
    let (service, argument) = service_and_argument(service, argument)?;
    let source = parse_token(source, Place::Source)?;
    let target = parse_token(target, Place::Target)?;
    let kind = match action {
        "allow" => "Allow",
        "deny" => "Deny",
        "ask" => "Ask",
        _ => {
            return Err(SyntaxError::Action {
                action: action.to_string(),
            });
        }
    };

    let mut kwds: Vec<(&str, &str)> = Vec::new();
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            return Err(SyntaxError::ParameterSyntax {
                parameter: param.to_string(),
            });
        };
        if kwds.iter().any(|(k, _)| *k == key) {
            return Err(SyntaxError::ParameterTwice {
                key: key.to_string(),
            });
        }
        kwds.push((key, value));
    }
    for (key, value) in &kwds {
        if matches!(*key, "notify" | "autostart") && !matches!(*value, "yes" | "no") {
            return Err(SyntaxError::NotYesOrNo {
                key: key.to_string(),
                value: value.to_string(),
            });
        }
    }
    let allowed: &[&str] = match kind {
        "Allow" => &["target", "user", "notify", "autostart"],
        "Ask" => &["target", "default_target", "user", "notify", "autostart"],
        _ => &["notify"],
    };
    if kwds.iter().any(|(k, _)| !allowed.contains(k)) {
        return Err(SyntaxError::ParametersForAction {
            action: kind,
            parameters: params.iter().map(|p| p.to_string()).collect(),
        });
    }
    let get = |key: &str| kwds.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let redirect = |key: &str| {
        get(key)
            .map(|v| parse_token(v, Place::Redirect))
            .transpose()
    };
    let action = match kind {
        "Allow" => Action::Allow {
            target: redirect("target")?,
            user: get("user").filter(|u| !u.is_empty()).map(str::to_string),
            notify: get("notify") == Some("yes"),
            autostart: get("autostart") != Some("no"),
        },
        "Ask" => {
            redirect("target")?;
            redirect("default_target")?;
            Action::Ask
        }
        _ => Action::Deny,
    };
    if target == Token::Default && matches!(action, Action::Allow { target: None, .. }) {
        return Err(SyntaxError::DefaultWithoutTarget);
    }
    Ok(Rule {
        service,
        argument,
        source,
        target,
        action,
        file: file.to_path_buf(),
        line,
    })
}

/// The result of loading: either rules, or the reason every call is denied.
pub(super) enum Loaded {
    Rules(Vec<Rule>),
    DenyAll(String),
}

/// Why loading stopped.
enum Stop {
    Error(PolicyError),
    /// qrexec's `AccessDenied` while loading: the whole policy denies.
    DenyAll(String),
}

impl From<PolicyError> for Stop {
    fn from(e: PolicyError) -> Self {
        Stop::Error(e)
    }
}

fn finish(result: Result<Vec<Rule>, Stop>) -> Result<Loaded, PolicyError> {
    match result {
        Ok(rules) => Ok(Loaded::Rules(rules)),
        Err(Stop::DenyAll(reason)) => Ok(Loaded::DenyAll(reason)),
        Err(Stop::Error(e)) => Err(e),
    }
}

/// `load_policy_dirs`: earlier dirs shadow later ones by file name, then all
/// files are read in name order. Missing dirs are skipped.
pub(super) fn load_dirs(dirs: &[&Path], compat_dir: &Path) -> Result<Loaded, PolicyError> {
    let run = || -> Result<Vec<Rule>, Stop> {
        let mut chosen: Vec<(String, PathBuf)> = Vec::new();
        for dir in dirs {
            for (name, path) in policy_files(dir)? {
                if !chosen.iter().any(|(n, _)| *n == name) {
                    chosen.push((name, path));
                }
            }
        }
        chosen.sort();
        let mut loader = Loader::new(compat_dir);
        for (_, path) in &chosen {
            let base = path.parent().unwrap_or(Path::new(""));
            loader.file(path, base, 0)?;
        }
        Ok(loader.rules)
    };
    finish(run())
}

/// Parses one file's text as if it were read from `file`, with includes
/// resolved against `base`.
pub(super) fn load_text(
    text: &str,
    file: &Path,
    base: &Path,
    compat_dir: &Path,
) -> Result<Loaded, PolicyError> {
    let mut loader = Loader::new(compat_dir);
    finish(loader.text(text, file, base, 0).map(|()| loader.rules))
}

/// The regular files of `dir` as (name, path). Like pathlib's `is_file()`,
/// this follows symlinks and skips what cannot be stat'ed. A missing
/// directory has none: the emulator's policy directories may not exist.
fn regular_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, PolicyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push((entry.file_name().to_string_lossy().into_owned(), path));
        }
    }
    Ok(files)
}

/// `filter_filepaths` on a directory: the `*.policy` regular files not
/// starting with `.`, sorted; one counted file with a name outside
/// `[0-9a-z_.-]` denies everything.
fn policy_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, Stop> {
    let mut files = regular_files(dir)?;
    files.retain(|(name, _)| name.ends_with(".policy") && !name.starts_with('.'));
    if let Some((_, bad)) = files.iter().find(|(name, _)| {
        !name
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || matches!(c, '_' | '.' | '-'))
    }) {
        return Err(Stop::DenyAll(format!(
            "invalid filename: {}",
            bad.display()
        )));
    }
    files.sort();
    Ok(files)
}

/// Accumulates rules across files and directives.
struct Loader {
    rules: Vec<Rule>,
    compat_dir: PathBuf,
}

impl Loader {
    fn new(compat_dir: &Path) -> Self {
        Loader {
            rules: Vec::new(),
            compat_dir: compat_dir.to_path_buf(),
        }
    }

    fn file(&mut self, path: &Path, base: &Path, depth: usize) -> Result<(), Stop> {
        let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
        self.text(&text, path, base, depth)
    }

    /// `load_policy_file`. `base` is the directory of the top-level policy
    /// file: qrexec resolves every include, even nested ones, against it.
    fn text(&mut self, text: &str, file: &Path, base: &Path, depth: usize) -> Result<(), Stop> {
        for (lineno, line) in content_lines(text) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with('!') {
                self.directive(&fields, file, lineno, base, depth)?;
                continue;
            }
            if fields.len() < 5 {
                return Err(syntax(file, lineno, SyntaxError::FieldCount).into());
            }
            let head = [fields[0], fields[1], fields[2], fields[3], fields[4]];
            let rule = make_rule(head, &fields[5..], file, Some(lineno))
                .map_err(|m| syntax(file, lineno, m))?;
            self.rules.push(rule);
        }
        Ok(())
    }

    fn directive(
        &mut self,
        fields: &[&str],
        file: &Path,
        lineno: usize,
        base: &Path,
        depth: usize,
    ) -> Result<(), Stop> {
        let params = &fields[1..];
        let count_error = || Stop::from(syntax(file, lineno, SyntaxError::ParameterCount));
        check_depth(depth, file, lineno)?;
        match fields[0] {
            "!include" => {
                let [path] = params else {
                    return Err(count_error());
                };
                let path = existing_file(base, path, file, lineno)?;
                self.file(&path, base, depth + 1)
            }
            "!include-dir" => {
                let [dir] = params else {
                    return Err(count_error());
                };
                let dir = base.join(dir);
                if !dir.is_dir() {
                    return Err(syntax(file, lineno, SyntaxError::NotADirectory(dir)).into());
                }
                for (_, path) in policy_files(&dir)? {
                    self.file(&path, base, depth + 1)?;
                }
                Ok(())
            }
            "!include-service" => {
                let [service, argument, path] = params else {
                    return Err(count_error());
                };
                let (service, argument) =
                    service_and_argument(service, argument).map_err(|m| syntax(file, lineno, m))?;
                let path = existing_file(base, path, file, lineno)?;
                self.service_file(&service, &argument, &path, base, depth + 1)
            }
            "!compat-4.0" => {
                if !params.is_empty() {
                    return Err(count_error());
                }
                self.compat(depth + 1)
            }
            _ => Err(syntax(file, lineno, SyntaxError::Directive).into()),
        }
    }

    /// `load_policy_file_service`: a file in the 4.0 syntax
    /// (`SOURCE TARGET ACTION[,PARAM=VALUE...]`, `$` for `@`) that applies to
    /// one service and argument.
    fn service_file(
        &mut self,
        service: &Option<String>,
        argument: &Option<String>,
        path: &Path,
        base: &Path,
        depth: usize,
    ) -> Result<(), Stop> {
        let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
        for (lineno, line) in content_lines(&text) {
            let line = line
                .replace("$include:", "!include ")
                .replace('$', "@")
                .replace(',', " ");
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with('!') {
                if fields[0] != "!include" {
                    return Err(syntax(path, lineno, SyntaxError::Directive).into());
                }
                let [_, included] = fields.as_slice() else {
                    return Err(syntax(path, lineno, SyntaxError::ParameterCount).into());
                };
                check_depth(depth, path, lineno)?;
                let included = existing_file(base, included, path, lineno)?;
                self.service_file(service, argument, &included, base, depth + 1)?;
                continue;
            }
            let rule = old_rule(service, argument, &fields, path, Some(lineno))
                .map_err(|m| syntax(path, lineno, m))?;
            self.rules.push(rule);
        }
        Ok(())
    }

    /// `!compat-4.0`: every file of the legacy directory, by service, each
    /// service's `+ARG` files before its plain one; after each `+ARG` file
    /// qrexec adds the deny rules that 4.0 implied.
    fn compat(&mut self, depth: usize) -> Result<(), Stop> {
        let legacy = self.compat_dir.clone();
        // (service, argument-or-None, path)
        let mut files: Vec<(String, Option<String>, PathBuf)> = Vec::new();
        for (name, path) in regular_files(&legacy)? {
            let ignored = name.starts_with('.')
                || [".rpmsave", ".rpmnew", ".swp"]
                    .iter()
                    .any(|s| name.ends_with(s));
            if ignored || !name.chars().all(rpc_char) {
                continue;
            }
            let (service, argument) = match name.split_once('+') {
                Some((s, a)) => (s.to_string(), Some(format!("+{a}"))),
                None => (name.clone(), None),
            };
            files.push((service, argument, path));
        }
        // Specific arguments first, the no-argument file last.
        files.sort_by(|a, b| (&a.0, a.1.is_none(), &a.1).cmp(&(&b.0, b.1.is_none(), &b.1)));
        for (service, argument, path) in files {
            let (service, argument) =
                service_and_argument(&service, argument.as_deref().unwrap_or("*"))
                    .map_err(|m| syntax(&path, 1, m))?;
            self.service_file(&service, &argument, &path, &legacy, depth)?;
            if argument.is_some() {
                for implied in [["@anyvm", "@anyvm", "deny"], ["@anyvm", "@adminvm", "deny"]] {
                    let rule = old_rule(&service, &argument, &implied, &path, None)
                        .map_err(|m| syntax(&path, 1, m))?;
                    self.rules.push(rule);
                }
            }
        }
        Ok(())
    }
}

/// The numbered lines a policy file's parser looks at, stripped: both
/// formats skip blank lines and `#` comments alike, and errors count lines
/// from 1.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// `Rule.from_line_service`: a 4.0 line, already with `@` and spaces.
fn old_rule(
    service: &Option<String>,
    argument: &Option<String>,
    fields: &[&str],
    file: &Path,
    line: Option<usize>,
) -> Result<Rule, SyntaxError> {
    let [source, target, action, params @ ..] = fields else {
        return Err(SyntaxError::FieldCount);
    };
    make_rule(
        [
            service.as_deref().unwrap_or("*"),
            argument.as_deref().unwrap_or("*"),
            source,
            target,
            action,
        ],
        params,
        file,
        line,
    )
}

/// Stops include loops, which qrexec itself would follow until Python's
/// recursion limit.
fn check_depth(depth: usize, file: &Path, lineno: usize) -> Result<(), Stop> {
    if depth >= MAX_INCLUDE_DEPTH {
        Err(syntax(file, lineno, SyntaxError::TooDeep).into())
    } else {
        Ok(())
    }
}

/// Resolves an include against `base`; qrexec refuses anything but a file.
fn existing_file(base: &Path, path: &str, file: &Path, lineno: usize) -> Result<PathBuf, Stop> {
    let resolved = base.join(path);
    if resolved.is_file() {
        Ok(resolved)
    } else {
        Err(syntax(file, lineno, SyntaxError::NotAFile(resolved)).into())
    }
}

/// Python's `repr()` of a string, so messages match qrexec's.
pub(super) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a list of strings.
fn py_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| py_repr(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Python's `repr()` of a tuple of strings.
fn py_tuple(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| py_repr(s)).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}
