//! The JSON of a request line as the parser first reads it (`request.rs` does the rest):
//! each field a request defines in a slot of its own ([`RawFields`]), values borrowed from
//! the line where they can be ([`Val`]), arrays of strings kept with their strings (a batch's
//! `inputs` and `outputs`), everything else read for its syntax only, and names no request
//! defines kept only to be refused. No map, no owned names: the steady state allocates
//! nothing here.
//!
//! What this room does not do: decide what a request means (`request.rs`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Every field name some request defines. A request's fields are parsed into a slot per
/// name (no map, no owned names); other names are kept only to be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Id,
    Op,
    Input,
    Output,
    Key,
    Format,
    Recursive,
    Overwrite,
    SkipExisting,
    Wait,
    Fds,
    Partition,
    Progress,
    Job,
    Inputs,
    Outputs,
}

impl Field {
    pub(super) const ALL: [Field; 16] = [
        Field::Id,
        Field::Op,
        Field::Input,
        Field::Output,
        Field::Key,
        Field::Format,
        Field::Recursive,
        Field::Overwrite,
        Field::SkipExisting,
        Field::Wait,
        Field::Fds,
        Field::Partition,
        Field::Progress,
        Field::Job,
        Field::Inputs,
        Field::Outputs,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Op => "op",
            Field::Input => "input",
            Field::Output => "output",
            Field::Key => "key",
            Field::Format => "format",
            Field::Recursive => "recursive",
            Field::Overwrite => "overwrite",
            Field::SkipExisting => "skip_existing",
            Field::Wait => "wait",
            Field::Fds => "fds",
            Field::Partition => "partition",
            Field::Progress => "progress",
            Field::Job => "job",
            Field::Inputs => "inputs",
            Field::Outputs => "outputs",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.name() == name)
    }
}

/// A field's value as parsed: strings borrowed from the line unless they hold escapes,
/// numbers as serde_json reads them, an array of strings with its strings (a batch's
/// `inputs` and `outputs`), and other arrays and objects only as what they are (no request
/// field takes one, so their contents are checked for syntax and dropped).
pub(super) enum Val<'de> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'de, str>),
    /// An array whose elements are all strings (or none).
    Strings(Vec<Cow<'de, str>>),
    Array,
    Object,
}

impl Val<'_> {
    /// The JSON type, for messages: "a number", "an array", ...
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Number(_) => "a number",
            Val::Str(_) => "a string",
            Val::Strings(_) | Val::Array => "an array",
            Val::Object => "an object",
        }
    }

    /// The value as a `Value` (arrays and objects empty: they are refused wherever this is
    /// used, by type).
    pub(super) fn into_value(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(flag) => Value::Bool(flag),
            Val::Number(number) => Value::Number(number),
            Val::Str(text) => Value::String(text.into_owned()),
            Val::Strings(_) | Val::Array => Value::Array(Vec::new()),
            Val::Object => Value::Object(Map::new()),
        }
    }
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Val<'de>, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(flag))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Val<'de>, E> {
        Ok(Val::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Val<'de>, E> {
        Ok(Val::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Val<'de>, E> {
        // As serde_json's `Value` does: a float it cannot hold becomes null.
        Ok(serde_json::Number::from_f64(n).map_or(Val::Null, Val::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(text)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        // Strings are kept while every element is one; after the first that is not, the
        // rest are only consumed, so serde_json still reports syntax errors inside them.
        let mut strings = Vec::new();
        while let Some(element) = seq.next_element::<Elem>()? {
            match element {
                Elem::Str(text) => strings.push(text),
                Elem::Other => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Val::Array);
                }
            }
        }
        Ok(Val::Strings(strings))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }
}

/// An element of an array: a string (borrowed from the line unless it holds escapes), or
/// something else, consumed for its syntax only.
enum Elem<'de> {
    Str(Cow<'de, str>),
    Other,
}

impl<'de> Deserialize<'de> for Elem<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Elem<'de>, D::Error> {
        deserializer.deserialize_any(ElemVisitor)
    }
}

struct ElemVisitor;

impl<'de> Visitor<'de> for ElemVisitor {
    type Value = Elem<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Elem<'de>, E> {
        Ok(Elem::Str(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Elem<'de>, E> {
        Ok(Elem::Str(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Elem<'de>, E> {
        Ok(Elem::Str(Cow::Owned(text)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Elem<'de>, E> {
        Ok(Elem::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Elem<'de>, E> {
        Ok(Elem::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Elem<'de>, E> {
        Ok(Elem::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Elem<'de>, E> {
        Ok(Elem::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Elem<'de>, E> {
        Ok(Elem::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Elem::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Elem<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Elem::Other)
    }
}

/// An object key, borrowed from the line unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name<'de>, D::Error> {
        deserializer.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(text)))
    }
}

/// A request object's fields: the first value of each known name, the names no request
/// defines (in order, repeats included), and the first name that appeared twice.
pub(super) struct RawFields<'de> {
    values: [Option<Val<'de>>; Field::ALL.len()],
    unknown: Vec<Cow<'de, str>>,
    pub(super) duplicate: Option<Cow<'de, str>>,
}

impl<'de> RawFields<'de> {
    /// Takes a field out, so later checks no longer see it.
    pub(super) fn take(&mut self, field: Field) -> Option<Val<'de>> {
        self.values[field as usize].take()
    }

    pub(super) fn contains(&self, field: Field) -> bool {
        self.values[field as usize].is_some()
    }

    /// Of the fields left, the first in byte order of its name that `allowed` does not
    /// hold.
    pub(super) fn first_not_in<'s>(&'s self, allowed: &[&str]) -> Option<&'s str> {
        let known = Field::ALL
            .into_iter()
            .filter(|&field| self.contains(field))
            .map(|field| -> &'s str { field.name() });
        let unknown = self.unknown.iter().map(|name| -> &'s str { name });
        known
            .chain(unknown)
            .filter(|name| !allowed.contains(name))
            .min()
    }
}

/// The top level of a request line: an object's fields, or what else it was. Returned once
/// per line and taken apart at once, so the size of its larger variant costs a copy, not an
/// allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum TopLevel<'de> {
    Object(RawFields<'de>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TopLevel<'de>, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
        let mut fields = RawFields {
            values: Default::default(),
            unknown: Vec::new(),
            duplicate: None,
        };
        while let Some((Name(name), value)) = map.next_entry::<Name, Val>()? {
            let seen = match Field::parse(&name) {
                Some(field) => {
                    let slot = &mut fields.values[field as usize];
                    let seen = slot.is_some();
                    if !seen {
                        *slot = Some(value);
                    }
                    seen
                }
                None => fields.unknown.contains(&name),
            };
            if seen {
                fields.duplicate.get_or_insert(name);
            } else if Field::parse(&name).is_none() {
                fields.unknown.push(name);
            }
        }
        Ok(TopLevel::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel<'de>, A::Error> {
        // Consume the elements so that serde_json still reports syntax errors inside them.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("null"))
    }
}
