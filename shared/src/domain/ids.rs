//! Identifiers, parsed once at the boundary: an invalid id cannot exist past it.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                let check: fn(&str) -> Result<(), &'static str> = $check;
                match check(&value) {
                    Ok(()) => Ok(Self(value)),
                    Err(reason) => Err(InvalidId { kind: $kind, value, reason }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn slug(value: &str, max: usize, upper_and_dot: bool) -> Result<(), &'static str> {
    let mut chars = value.chars();
    let Some(first) = chars.next() else { return Err("must not be empty") };
    if value.len() > max {
        return Err("is too long");
    }
    let ok_first =
        first.is_ascii_digit() || first.is_ascii_lowercase() || (upper_and_dot && first.is_ascii_uppercase());
    let ok_rest = chars.all(|c| {
        c.is_ascii_digit()
            || c.is_ascii_lowercase()
            || c == '_'
            || c == '-'
            || (upper_and_dot && (c.is_ascii_uppercase() || c == '.'))
    });
    if ok_first && ok_rest {
        Ok(())
    } else if upper_and_dot {
        Err("must start with a letter or digit and contain only letters, digits, '.', '_' and '-'")
    } else {
        Err("must start with a lowercase letter or digit and contain only lowercase letters, digits, '_' and '-'")
    }
}

// The same rules as the CHECK constraints in migrations/V1__initial_schema.sql.
id_type!(
    /// A campaign's id; also a path segment of upload keys (`incoming/<campaign_id>/...`).
    CampaignId,
    "campaign id",
    |v| slug(v, 128, true)
);
id_type!(
    /// A partner's id.
    PartnerId,
    "partner id",
    |v| slug(v, 64, false)
);
id_type!(
    /// A click's id as the data team sent it: unique within its campaign.
    ClickId,
    "click id",
    |v| {
        if v.is_empty() {
            Err("must not be empty")
        } else if v.len() > 256 {
            Err("is longer than 256 bytes")
        } else if v.chars().any(char::is_control) {
            Err("contains control characters")
        } else {
            Ok(())
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_schema_rules() {
        assert!(CampaignId::parse("Spring-Sale_2026.v2").is_ok());
        assert!(CampaignId::parse("").is_err());
        assert!(CampaignId::parse("-x").is_err());
        assert!(CampaignId::parse("a/b").is_err());
        assert!(PartnerId::parse("acme-ads").is_ok());
        assert!(PartnerId::parse("Acme").is_err());
        assert!(ClickId::parse("c".repeat(256)).is_ok());
        let err = ClickId::parse("c".repeat(257)).unwrap_err();
        assert_eq!(err.to_string(), format!("invalid click id {:?}: is longer than 256 bytes", "c".repeat(257)));
    }

    #[test]
    fn ids_deserialize_through_parse() {
        assert!(serde_json::from_str::<PartnerId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<PartnerId>("\"NOT OK\"").is_err());
    }
}
