//! Why auth-service refused a token, as it crosses gRPC: one enum, one
//! encoder (auth-service) and one decoder (the edge), carried in the
//! `x-parley-reason` response metadata. The edge picks its close code from
//! it (4003 for `expired` and `revoked`, else 4002) and remembers blocked
//! addresses.

use tonic::Status;
use tonic::metadata::AsciiMetadataValue;

/// Response metadata key of the reason.
pub const METADATA: &str = "x-parley-reason";

/// Declares the reasons with their wire names.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A refused token's cause; its name is shown to callers and logged,
        /// never any part of the token.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AuthReason {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl AuthReason {
            /// Every reason.
            pub const ALL: &'static [AuthReason] = &[$(AuthReason::$variant),*];

            /// The wire name, e.g. `bad_signature`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( AuthReason::$variant => $name, )*
                }
            }

            /// The reason of a wire name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(AuthReason::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// Past its `exp`.
    Expired = "expired",
    /// The token, its session or its user was revoked.
    Revoked = "revoked",
    /// Too many failed attempts from the address.
    Blocked = "blocked",
    BadSignature = "bad_signature",
    AlgNotAllowed = "alg_not_allowed",
    UnknownKey = "unknown_key",
    MissingClaim = "missing_claim",
    NotYetValid = "not_yet_valid",
    WrongIssuer = "wrong_issuer",
    WrongAudience = "wrong_audience",
    BadSubject = "bad_subject",
    ReservedSubject = "reserved_subject",
    Malformed = "malformed",
    TooLarge = "too_large",
    UnsupportedHeader = "unsupported_header",
    WrongTokenType = "wrong_token_type",
    /// Valid for longer than `auth.max_token_lifetime_s` from now.
    LifetimeTooLong = "lifetime_too_long",
    /// Any other refusal of the JWT library.
    Rejected = "rejected",
}

impl AuthReason {
    /// Attaches the reason to a status (auth-service).
    pub fn encode(self, status: &mut Status) {
        status
            .metadata_mut()
            .insert(METADATA, AsciiMetadataValue::from_static(self.as_str()));
    }

    /// The reason a status carries (callers of auth-service).
    pub fn decode(status: &Status) -> Option<Self> {
        status
            .metadata()
            .get(METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::from_name)
    }
}

impl std::fmt::Display for AuthReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_a_status() {
        for reason in AuthReason::ALL {
            let mut status = Status::unauthenticated("refused");
            reason.encode(&mut status);
            assert_eq!(AuthReason::decode(&status), Some(*reason));
        }
        assert_eq!(AuthReason::decode(&Status::unauthenticated("x")), None);
    }
}
