//! Deciding a call against parsed rules (`AbstractPolicy.evaluate`).

use super::parse::{Action, Place, Rule, Token, parse_token, py_repr};
use super::{Denied, Qube, Request, Resolution, System};

/// What the caller asked for, after qrexec's `IntendedTarget.verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Intended {
    Admin,
    /// No target, or one that does not exist.
    Default,
    DispVm,
    DispVmTemplate(String),
    Qube(String),
}

pub(super) fn evaluate(
    rules: &[Rule],
    req: &Request,
    system: &System,
) -> Result<Resolution, Denied> {
    let source = system
        .qube(req.source)
        .ok_or_else(|| Denied::new(format!("unknown source qube: {}", req.source)))?;
    let argument = format!("+{}", req.argument);
    let intended = intended_target(req.target, system)?;
    let rule = rules
        .iter()
        .find(|rule| {
            rule.service.as_deref().is_none_or(|s| s == req.service)
                && rule.argument.as_deref().is_none_or(|a| a == argument)
                && source_matches(&rule.source, source)
                && target_matches(&rule.target, &intended, source, system)
        })
        .ok_or_else(|| Denied::new("no matching rule found"))?;

    match &rule.action {
        Action::Deny => Err(Denied::new(format!("denied by policy {}", rule.location()))),
        Action::Ask => Err(Denied::new("ask is not supported without a GUI agent")),
        Action::Allow {
            target,
            user,
            notify,
            autostart,
        } => {
            let actual = match target {
                Some(redirect) => verify(redirect, system)?,
                None => intended,
            };
            let target = match actual {
                Intended::Default => {
                    return Err(Denied::new(format!(
                        "policy define 'allow' action at {} but no target is specified by caller or policy",
                        rule.location()
                    )));
                }
                Intended::DispVm => match &source.default_dispvm {
                    Some(template) => format!("@dispvm:{template}"),
                    None => {
                        return Err(Denied::new(format!(
                            "policy define 'allow' action to @dispvm at {} but no DispVM base is set for this VM",
                            rule.location()
                        )));
                    }
                },
                Intended::Admin => "dom0".to_string(),
                Intended::DispVmTemplate(template) => format!("@dispvm:{template}"),
                Intended::Qube(name) => name,
            };
            // qrexec cannot connect a qube to itself (QubesOS/qubes-issues#951).
            if target == source.name {
                return Err(Denied::new("loopback qrexec connection not supported"));
            }
            let user = if target == "dom0" { None } else { user.clone() };
            Ok(Resolution::Allow {
                target,
                user,
                autostart: *autostart,
                notify: *notify,
            })
        }
    }
}

/// Turns the caller's target into what rules are matched against: a qube
/// that does not exist becomes `@default`, so it can still match `@anyvm`.
fn intended_target(target: &str, system: &System) -> Result<Intended, Denied> {
    let target = if target.is_empty() {
        "@default"
    } else {
        target
    };
    let token = parse_token(target, Place::Intended)
        .map_err(|_| Denied::new(format!("invalid target: {}", py_repr(target))))?;
    verify(&token, system)
}

/// `IntendedTarget.verify`, which qrexec also applies to a rule's `target=`.
fn verify(token: &Token, system: &System) -> Result<Intended, Denied> {
    match token {
        Token::AdminVm => Ok(Intended::Admin),
        Token::Default => Ok(Intended::Default),
        Token::DispVm => Ok(Intended::DispVm),
        Token::DispVmTemplate(name) => match system.qube(name) {
            Some(q) if q.template_for_dispvms => Ok(Intended::DispVmTemplate(name.clone())),
            _ => Err(Denied::new(format!("not a template for dispvm: {name}"))),
        },
        Token::Name(name) if system.qube(name).is_some() => Ok(Intended::Qube(name.clone())),
        Token::Name(_) => Ok(Intended::Default),
        // Not valid as a caller's target or a redirect; parsing refuses them.
        other => Err(Denied::new(format!("invalid target: {other:?}"))),
    }
}

fn source_matches(token: &Token, source: &Qube) -> bool {
    match token {
        Token::Wildcard => true,
        Token::AnyVm => source.name != "dom0",
        Token::AdminVm => source.name == "dom0",
        Token::Name(name) => *name == source.name,
        Token::Type(klass) => source.klass == *klass,
        Token::Tag(tag) => source.tags.contains(tag),
        // As in qrexec, a source is a qube name, never a `@dispvm:` token, so
        // these valid source tokens match no caller.
        Token::DispVmTemplate(_) | Token::DispVmTag(_) => false,
        Token::Default | Token::DispVm => false,
    }
}

fn target_matches(token: &Token, intended: &Intended, source: &Qube, system: &System) -> bool {
    match token {
        Token::Wildcard => true,
        Token::AnyVm => *intended != Intended::Admin,
        Token::AdminVm => *intended == Intended::Admin,
        Token::Default => *intended == Intended::Default,
        Token::DispVm => *intended == Intended::DispVm,
        Token::Name(name) => *intended == Intended::Qube(name.clone()),
        // qrexec names dom0 `@adminvm` here, which is no qube's name, so
        // `@type:AdminVM` and `@tag:` never match a call to dom0.
        Token::Type(klass) => match intended {
            Intended::Qube(name) => system.qube(name).is_some_and(|q| q.klass == *klass),
            _ => false,
        },
        Token::Tag(tag) => match intended {
            Intended::Qube(name) => system.qube(name).is_some_and(|q| q.tags.contains(tag)),
            _ => false,
        },
        Token::DispVmTemplate(template) => match intended {
            Intended::DispVm => source.default_dispvm.as_ref() == Some(template),
            Intended::DispVmTemplate(t) => t == template,
            _ => false,
        },
        Token::DispVmTag(tag) => {
            let template = match intended {
                Intended::DispVm => source.default_dispvm.as_deref(),
                Intended::DispVmTemplate(t) => Some(t.as_str()),
                _ => None,
            };
            template
                .and_then(|t| system.qube(t))
                .is_some_and(|q| q.template_for_dispvms && q.tags.contains(tag))
        }
    }
}
