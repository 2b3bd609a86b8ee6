//! A serde [`Deserializer`](serde::Deserializer) over TOML's spanned document tree
//! ([`toml::de::DeTable`]) that knows, at every value, its dotted key (`groups.www.paths`) and
//! its place in the file, so that every mistake it meets becomes a
//! [`ConfigError::Invalid`] naming the file, line and key, in a sysadmin's words.
//!
//! The serde types of [`super::raw`] carry the shape of the file; this module turns their
//! expectations into messages:
//!
//! - a table read into a struct may only hold the struct's fields: any other key is refused
//!   with `unknown key "x" in [table] (did you mean "y"?); valid keys: ...`, the valid keys
//!   being the struct's fields in declaration order (serde passes them to
//!   `deserialize_struct`, so the list cannot drift from the types);
//! - a value of the wrong type is refused with `expected <what>, found <what it is>`, where
//!   `<what>` is `a string`, `true or false`, `a whole number`, `a table ([key])`, or the
//!   `expecting` text of the visitor (a visitor may write `{key}` in it for the dotted key);
//! - an integer out of range of its Rust type is refused with `N is out of range (MIN to MAX)`;
//! - an error raised by a visitor without a place (`serde::de::Error::custom`) is placed at
//!   the innermost value being read when it arises.
//!
//! Tables are visited in file order, and the line of every key seen is recorded (the lines a
//! [`super::Config`] keeps for the checks made after parsing). Elements of an array keep the
//! array's key, except tables (`[[groups.g.actions]]`), which are keyed `groups.g.actions[0]`.
//! [`toml::Spanned`] fields get the span of their value.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor};
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::values::closest;

/// Placeholder a visitor's `expecting` text may use for the dotted key of the value.
pub(super) const KEY_PLACEHOLDER: &str = "{key}";

/// The file being read, and the lines of the keys seen so far.
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub file: &'a Path,
    pub lines: RefCell<HashMap<String, usize>>,
}

impl<'a> Source<'a> {
    pub fn new(text: &'a str, file: &'a Path) -> Source<'a> {
        Source {
            text,
            file,
            lines: RefCell::new(HashMap::new()),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub fn err(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A TOML syntax error, at its line and column.
    pub fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let start = span.start.min(self.text.len());
        let line_start = self.text.as_bytes()[..start]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = self
            .text
            .get(line_start..start)
            .map_or(1, |s| s.chars().count() + 1);
        let mut message = e.message().to_owned();
        if let Some(what) = self.text.get(span.clone())
            && message == "duplicate key"
            && !what.is_empty()
        {
            message = format!("duplicate key {what:?} (a key or table is defined twice)");
        }
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(&span),
            key: "TOML syntax".to_owned(),
            message: format!("{message} (column {column})"),
        }
    }

    /// Reads the document `root` into `T`.
    pub fn read<T: de::DeserializeOwned>(
        &self,
        root: &toml::Spanned<DeTable<'_>>,
    ) -> Result<T, ConfigError> {
        let value = DeValue::Table(root.get_ref().clone());
        let de = ValueDe {
            src: self,
            value: &value,
            span: root.span(),
            key: String::new(),
            element_of: None,
        };
        T::deserialize(de).map_err(|e| match e {
            DeError::Placed(e) => *e,
            DeError::Loose(message) => self.err(&(0..0), "", message),
        })
    }
}

/// An error on the way out of the deserializer: placed (file, line, key known) or not yet.
#[derive(Debug)]
pub(super) enum DeError {
    Placed(Box<ConfigError>),
    Loose(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Placed(e) => e.fmt(f),
            DeError::Loose(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Loose(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError::Loose(format!(
            "expected {exp}, found {}",
            describe_unexpected(&unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError::Loose(format!(
            "expected {exp}, found {}",
            describe_unexpected(&unexp)
        ))
    }
}

/// A value as a sysadmin would call it, for "expected X, found Y".
pub(super) fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(x) => format!("the number {x}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

fn describe_unexpected(u: &Unexpected<'_>) -> String {
    match u {
        Unexpected::Bool(b) => format!("{b}"),
        Unexpected::Unsigned(n) => format!("the number {n}"),
        Unexpected::Signed(n) => format!("the number {n}"),
        Unexpected::Float(x) => format!("the number {x}"),
        Unexpected::Str(s) => format!("the string {s:?}"),
        Unexpected::Char(c) => format!("the string \"{c}\""),
        Unexpected::Seq => "an array".to_owned(),
        Unexpected::Map => "a table".to_owned(),
        other => other.to_string(),
    }
}

fn int_value(i: &toml::de::DeInteger<'_>) -> Option<i128> {
    i128::from_str_radix(i.as_str(), i.radix()).ok()
}

/// One value of the document, with its dotted key and place.
struct ValueDe<'s, 'v, 'i> {
    src: &'s Source<'s>,
    value: &'v DeValue<'i>,
    span: Range<usize>,
    /// Dotted key (`groups.www.paths`; `groups.g.actions[0]` for a table in an array).
    key: String,
    /// The key of the array this value is an element of.
    element_of: Option<String>,
}

impl<'s, 'v, 'i> ValueDe<'s, 'v, 'i> {
    fn err(&self, message: impl Into<String>) -> DeError {
        DeError::Placed(Box::new(self.src.err(&self.span, &self.key, message)))
    }

    /// Places an error raised below this value without a place.
    fn place<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| match e {
            DeError::Loose(m) => self.err(m),
            placed => placed,
        })
    }

    fn wrong_type(&self, expected: &str) -> DeError {
        let expected = expected.replace(
            KEY_PLACEHOLDER,
            self.element_of.as_ref().unwrap_or(&self.key),
        );
        let within = if self.element_of.is_some() {
            " in the array"
        } else {
            ""
        };
        self.err(format!(
            "expected {expected}, found {}{within}",
            describe(self.value)
        ))
    }

    fn child_key(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.key)
        }
    }

    /// The entries of a table in file order, each key's line recorded; with `allowed`, a key
    /// not in it is refused.
    fn entries(
        &self,
        table: &'v DeTable<'i>,
        allowed: Option<&[&str]>,
    ) -> Result<Vec<(String, &'v toml::Spanned<DeValue<'i>>)>, DeError> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let name: &str = k.get_ref();
            let key = self.child_key(name);
            if let Some(allowed) = allowed
                && !allowed.contains(&name)
            {
                return Err(DeError::Placed(Box::new(self.src.err(
                    &k.span(),
                    &key,
                    self.unknown_key(name, allowed),
                ))));
            }
            let line = self.src.line(&k.span());
            self.src.lines.borrow_mut().insert(key, line);
            out.push((name.to_owned(), v));
        }
        Ok(out)
    }

    fn unknown_key(&self, name: &str, allowed: &[&str]) -> String {
        let place = if self.key.is_empty() {
            "at the top level".to_owned()
        } else if let Some((array, _)) = self.key.split_once('[') {
            format!("in a [[{array}]] block")
        } else {
            format!("in [{}]", self.key)
        };
        let mut message = format!("unknown key {name:?} {place}");
        if let Some(best) = closest(name, allowed) {
            message.push_str(&format!(" (did you mean {best:?}?)"));
        }
        message.push_str(&format!("; valid keys: {}", allowed.join(", ")));
        message
    }

    fn visit_table<V: Visitor<'i>>(
        self,
        table: &'v DeTable<'i>,
        allowed: Option<&[&str]>,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries = self.entries(table, allowed)?;
        let access = TableAccess {
            src: self.src,
            parent: &self,
            entries: entries.into_iter(),
            pending: None,
        };
        let r = visitor.visit_map(access);
        self.place(r)
    }

    fn integer<V: Visitor<'i>>(
        self,
        min: i128,
        max: i128,
        visitor: V,
        visit: impl FnOnce(V, i128) -> Result<V::Value, DeError>,
    ) -> Result<V::Value, DeError> {
        match self.value {
            DeValue::Integer(i) => match int_value(i) {
                Some(v) if (min..=max).contains(&v) => {
                    let r = visit(visitor, v);
                    self.place(r)
                }
                _ => Err(self.err(format!("{i} is out of range ({min} to {max})"))),
            },
            _ => Err(self.wrong_type("a whole number")),
        }
    }
}

macro_rules! integers {
    ($($method:ident $ty:ty => $visit:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.integer(i128::from(<$ty>::MIN), i128::from(<$ty>::MAX), visitor, |v, n| {
                // In range by the check above.
                v.$visit(<$ty>::try_from(n).map_err(|_| DeError::Loose("out of range".into()))?)
            })
        }
    )*};
}

impl<'i> de::Deserializer<'i> for ValueDe<'_, '_, 'i> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match self.value {
            DeValue::String(s) => visitor.visit_str(s),
            DeValue::Integer(i) => match int_value(i).map(i64::try_from) {
                Some(Ok(n)) => visitor.visit_i64(n),
                _ => return Err(self.err(format!("{i} is out of range"))),
            },
            DeValue::Float(x) => match x.as_str().parse::<f64>() {
                Ok(f) => visitor.visit_f64(f),
                Err(_) => visitor.visit_str(x.as_str()),
            },
            DeValue::Boolean(b) => visitor.visit_bool(*b),
            DeValue::Datetime(d) => visitor.visit_string(d.to_string()),
            DeValue::Array(_) => return self.deserialize_seq(visitor),
            DeValue::Table(t) => return self.visit_table(t, None, visitor),
        };
        self.place(r)
    }

    fn deserialize_bool<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            DeValue::Boolean(b) => {
                let r = visitor.visit_bool(*b);
                self.place(r)
            }
            _ => Err(self.wrong_type("true or false")),
        }
    }

    integers! {
        deserialize_u8 u8 => visit_u8,
        deserialize_u16 u16 => visit_u16,
        deserialize_u32 u32 => visit_u32,
        deserialize_u64 u64 => visit_u64,
        deserialize_i8 i8 => visit_i8,
        deserialize_i16 i16 => visit_i16,
        deserialize_i32 i32 => visit_i32,
        deserialize_i64 i64 => visit_i64,
    }

    fn deserialize_str<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            DeValue::String(s) => {
                let r = visitor.visit_str(s);
                self.place(r)
            }
            _ => Err(self.wrong_type(&(&visitor as &dyn Expected).to_string())),
        }
    }

    fn deserialize_string<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            DeValue::Array(items) => {
                let access = ArrayAccess {
                    parent: &self,
                    items: items.iter().enumerate(),
                };
                let r = visitor.visit_seq(access);
                self.place(r)
            }
            _ => Err(self.wrong_type(&(&visitor as &dyn Expected).to_string())),
        }
    }

    fn deserialize_map<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            DeValue::Table(t) => self.visit_table(t, None, visitor),
            _ => {
                let expected = format!("a table ([{}])", self.key);
                Err(self.wrong_type(&expected))
            }
        }
    }

    fn deserialize_struct<V: Visitor<'i>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if serde_spanned::de::is_spanned(name) {
            let span = self.span.clone();
            return visitor.visit_map(serde_spanned::de::SpannedDeserializer::new(self, span));
        }
        match self.value {
            DeValue::Table(t) => self.visit_table(t, Some(fields), visitor),
            _ => {
                let expected = match &self.element_of {
                    Some(array) => format!("[[{array}]] blocks"),
                    None => format!("a table ([{}])", self.key),
                };
                // An element of an array of tables is reported as an element, not a table.
                let shown = ValueDe {
                    element_of: None,
                    key: self.element_of.clone().unwrap_or_else(|| self.key.clone()),
                    ..self
                };
                Err(shown.wrong_type(&expected))
            }
        }
    }

    fn deserialize_option<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'i>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'i>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'i>>
        i128 u128 f32 f64 char bytes byte_buf unit unit_struct tuple tuple_struct enum identifier
    }
}

impl<'i, 's, 'v> IntoDeserializer<'i, DeError> for ValueDe<'s, 'v, 'i> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// The entries of a table, for a struct or map visitor.
struct TableAccess<'s, 'p, 'v, 'i, I> {
    src: &'s Source<'s>,
    parent: &'p ValueDe<'s, 'v, 'i>,
    entries: I,
    pending: Option<(String, &'v toml::Spanned<DeValue<'i>>)>,
}

impl<'s, 'v, 'i, I> de::MapAccess<'i> for TableAccess<'s, '_, 'v, 'i, I>
where
    I: Iterator<Item = (String, &'v toml::Spanned<DeValue<'i>>)>,
{
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'i>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        let key = seed.deserialize(name.clone().into_deserializer());
        self.pending = Some((name, value));
        key.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'i>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((name, value)) = self.pending.take() else {
            return Err(DeError::Loose(
                "a table value was read before its key".into(),
            ));
        };
        seed.deserialize(ValueDe {
            src: self.src,
            value: value.get_ref(),
            span: value.span(),
            key: self.parent.child_key(&name),
            element_of: None,
        })
    }
}

/// The elements of an array, for a sequence visitor.
struct ArrayAccess<'s, 'p, 'v, 'i, I> {
    parent: &'p ValueDe<'s, 'v, 'i>,
    items: I,
}

impl<'s, 'v, 'i, I> de::SeqAccess<'i> for ArrayAccess<'s, '_, 'v, 'i, I>
where
    I: Iterator<Item = (usize, &'v toml::Spanned<DeValue<'i>>)>,
{
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'i>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, item)) = self.items.next() else {
            return Ok(None);
        };
        let key = if matches!(item.get_ref(), DeValue::Table(_)) {
            let key = format!("{}[{i}]", self.parent.key);
            let line = self.parent.src.line(&item.span());
            self.parent
                .src
                .lines
                .borrow_mut()
                .entry(key.clone())
                .or_insert(line);
            key
        } else {
            self.parent.key.clone()
        };
        seed.deserialize(ValueDe {
            src: self.parent.src,
            value: item.get_ref(),
            span: item.span(),
            key,
            element_of: Some(self.parent.key.clone()),
        })
        .map(Some)
    }
}

/// The fields of a struct, as serde lists them (for tests, messages and `config::keys`).
pub(super) fn fields_of<T: de::DeserializeOwned>() -> Vec<&'static str> {
    struct Probe;
    #[derive(Debug)]
    struct Fields(&'static [&'static str]);
    impl fmt::Display for Fields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Fields(&[])
        }
    }
    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    match T::deserialize(Probe) {
        Ok(_) => Vec::new(),
        Err(Fields(f)) => f.to_vec(),
    }
}
