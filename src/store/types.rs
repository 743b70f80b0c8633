//! Column types with a meaning: what a BIGINT column holds, said once at the row boundary.

use sqlx::{
    Any, Database, Decode, Encode, Type,
    any::{AnyTypeInfo, AnyValueRef},
    encode::IsNull,
    error::BoxDynError,
};

/// A moment as stored: unix milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Type)]
#[sqlx(transparent)]
pub struct UnixMs(pub i64);

impl UnixMs {
    pub fn now() -> Self {
        Self(super::now_ms())
    }
}

impl From<UnixMs> for i64 {
    fn from(at: UnixMs) -> Self {
        at.0
    }
}

/// A yes/no column: stored as a BIGINT 0 or 1 (so both backends share every query), read as
/// "anything but 0".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(flag: Flag) -> Self {
        flag.0
    }
}

impl Type<Any> for Flag {
    fn type_info() -> AnyTypeInfo {
        <i64 as Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        <i64 as Type<Any>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Any> for Flag {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(<i64 as Decode<Any>>::decode(value)? != 0))
    }
}

impl<'q> Encode<'q, Any> for Flag {
    fn encode_by_ref(&self, buf: &mut <Any as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Any>>::encode(i64::from(self.0), buf)
    }
}
