//! The shape of `clustersync.toml` as serde types: one struct per kind of table, whose fields
//! are the keys that table accepts (in the order the "valid keys" message lists them), with
//! [`Spanned`] values so that the checks of [`super::check`] can point at the line of a value.
//!
//! Every key is optional here; which keys are required, and what values mean, is decided by
//! the checks. Values whose syntax is richer than TOML's types (durations, sizes, rates) are
//! read as a [`Scalar`] (a string or an integer) and parsed by the checks. The same types are
//! written by [`super::write`], with spans of `0..0`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The document.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawCluster>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Entries<RawNode>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Entries<RawGroup>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<RawAccounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RawMetrics>,
}

/// `[cluster]`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawCluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Spanned<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<Spanned<Scalar>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_every: Option<Spanned<Scalar>>,
}

/// `[nodes.NAME]`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawNode {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<Spanned<Scalar>>,
}

/// `[groups.NAME]`. The keys added after `actions` are listed last in messages, as they were
/// added last.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_generations: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_drift: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescan: Option<Spanned<Scalar>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Spanned<Blocks<RawAction>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs_include: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattrs_exclude: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_max_bytes: Option<Spanned<Scalar>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_every: Option<Spanned<Scalar>>,
}

/// `[[groups.NAME.actions]]`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Scalar>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logfile: Option<Spanned<String>>,
}

/// `[accounts]`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawAccounts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Spanned<Strings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_range: Option<Spanned<UidRange>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passwords: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_home: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Spanned<String>>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RawMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Spanned<Scalar>>,
}

/// Wraps a value read or written with no place in a file.
pub(super) fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// A string or an integer, for values with their own syntax (durations, sizes, rates); any
/// other TOML value is kept as its description, for the checks' "expected X, found Y".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scalar {
    Str(String),
    Int(i64),
    Other(String),
}

impl Scalar {
    /// The value as a sysadmin would call it.
    pub fn describe(&self) -> String {
        match self {
            Scalar::Str(s) => format!("the string {s:?}"),
            Scalar::Int(i) => format!("the number {i}"),
            Scalar::Other(what) => what.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v)
                    .map_or_else(|_| Scalar::Other(format!("the number {v}")), Scalar::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other(format!("the number {v}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array".to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
                while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("a table".to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Str(v) | Scalar::Other(v) => s.serialize_str(v),
            Scalar::Int(i) => s.serialize_i64(*i),
        }
    }
}

/// The sub-tables of a table whose keys are names (`[nodes.NAME]`, `[groups.NAME]`), in file
/// order.
#[derive(Debug)]
pub(super) struct Entries<T>(pub Vec<(String, T)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Entries<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

impl<T: Serialize> Serialize for Entries<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A list type with its own "expected ..." text.
macro_rules! list {
    ($(#[$doc:meta])* $name:ident<$item:ty>, $expecting:expr) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub(super) struct $name(pub Vec<$item>);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<$name, A::Error> {
                        let mut out = Vec::new();
                        while let Some(item) = a.next_element()? {
                            out.push(item);
                        }
                        Ok($name(out))
                    }
                }
                d.deserialize_seq(V)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for item in &self.0 {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    };
}

list!(
    /// An array of strings, each with its place.
    Strings<Spanned<String>>,
    "an array of strings, e.g. [\"a\", \"b\"]"
);

list!(
    /// `uid_range`: two numbers, each with its place (checked by the checks).
    UidRange<Spanned<Scalar>>,
    "two uids [LO, HI], e.g. [2000, 2999]"
);

/// `[[KEY]]` blocks: an array of tables.
#[derive(Debug)]
pub(super) struct Blocks<T>(pub Vec<Spanned<T>>);

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Blocks(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Blocks<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Blocks<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "[[{}]] blocks", super::de::KEY_PLACEHOLDER)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Blocks<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = a.next_element()? {
                    out.push(item);
                }
                Ok(Blocks(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

impl<T: Serialize> Serialize for Blocks<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in &self.0 {
            seq.serialize_element(item.get_ref())?;
        }
        seq.end()
    }
}
