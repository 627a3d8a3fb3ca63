//! Components of a service's document whose names an earlier service took
//! for something else are renamed `service.Name`, and its references
//! follow them.

use serde_json::{Map, Value};

/// Renames the components of `doc`, `service`'s document, whose names
/// `merged` holds for a different entry, and points the document's
/// references at the new names. Security schemes are left: requirements
/// name them without a reference.
///
/// An entry that matched may differ once its references have followed a
/// renamed one, so renaming goes on in rounds until a round renames
/// nothing. Each new name is free in both documents, so the rounds end.
pub(super) fn rename_clashes(service: &str, doc: &mut Value, merged: &Map<String, Value>) {
    loop {
        let renamed = rename_round(service, doc, merged);
        if renamed.is_empty() {
            return;
        }
        repoint(doc, &renamed);
    }
}

/// A component given a new name.
struct Renamed {
    /// The components' kind (`schemas`, `responses`, ...).
    kind: String,
    old: String,
    new: String,
}

impl Renamed {
    /// `target`, a reference, pointed at the new name when it points at
    /// or into the component.
    fn repointed(&self, target: &str) -> Option<String> {
        let rest = target
            .strip_prefix("#/components/")?
            .strip_prefix(self.kind.as_str())?
            .strip_prefix('/')?
            .strip_prefix(self.old.as_str())?;
        (rest.is_empty() || rest.starts_with('/'))
            .then(|| format!("#/components/{}/{}{rest}", self.kind, self.new))
    }
}

/// One round of [`rename_clashes`]: renames what clashes now.
fn rename_round(service: &str, doc: &mut Value, merged: &Map<String, Value>) -> Vec<Renamed> {
    let mut renamed = Vec::new();
    let Some(own) = doc.get_mut("components").and_then(Value::as_object_mut) else {
        return renamed;
    };
    for (kind, entries) in own.iter_mut() {
        if kind == "securitySchemes" {
            continue;
        }
        let (Some(entries), Some(taken)) = (
            entries.as_object_mut(),
            merged.get(kind).and_then(Value::as_object),
        ) else {
            continue;
        };
        let clashing: Vec<String> = entries
            .iter()
            .filter(|(name, entry)| taken.get(*name).is_some_and(|t| t != *entry))
            .map(|(name, _)| name.clone())
            .collect();
        for name in clashing {
            let new = free_name(service, &name, |n| {
                taken.contains_key(n) || entries.contains_key(n)
            });
            if let Some(entry) = entries.remove(&name) {
                entries.insert(new.clone(), entry);
            }
            renamed.push(Renamed {
                kind: kind.clone(),
                old: name,
                new,
            });
        }
    }
    renamed
}

/// `service.name`, with what a component name may not hold in the service's
/// name replaced, and a number added while `is_taken`.
fn free_name(service: &str, name: &str, is_taken: impl Fn(&str) -> bool) -> String {
    let service: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = format!("{service}.{name}");
    let mut candidate = base.clone();
    let mut n = 2;
    while is_taken(&candidate) {
        candidate = format!("{base}.{n}");
        n += 1;
    }
    candidate
}

/// Points every reference in `value` to a component in `renamed` at its
/// new name: `$ref`s, and the schemas a discriminator's mapping names.
fn repoint(value: &mut Value, renamed: &[Renamed]) {
    let follow = |target: &str| renamed.iter().find_map(|r| r.repointed(target));
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = v
                {
                    if let Some(new) = follow(target) {
                        *target = new;
                    }
                    continue;
                }
                if key == "discriminator"
                    && let Some(Value::Object(mapping)) = v.get_mut("mapping")
                {
                    for target in mapping.values_mut() {
                        let Value::String(target) = target else {
                            continue;
                        };
                        // A mapping names a schema by reference or by name.
                        let by_name = || {
                            renamed
                                .iter()
                                .find(|r| r.kind == "schemas" && r.old == *target)
                                .map(|r| r.new.clone())
                        };
                        if let Some(new) = follow(target).or_else(by_name) {
                            *target = new;
                        }
                    }
                }
                repoint(v, renamed);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| repoint(v, renamed)),
        _ => {}
    }
}
