//! Personal data kept as given and used where it belongs (the provider's hosted page, the
//! merchant's own reads), but never printed: `Debug` masks it, so a payment in a log line, a
//! panic or an error shows that a value is there and nothing of it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A buyer's e-mail address. Serialized as the plain string (the stored and webhook formats stay).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn new(address: impl Into<String>) -> Self {
        Self(address.into())
    }

    /// The address itself, for the places it is meant for.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_exposed(self) -> String {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("Email(\"\")") } else { f.write_str("Email(***)") }
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn debug_shows_that_an_address_is_there_and_nothing_of_it() {
        let email = Email::new("buyer@example.com");
        assert_eq!(format!("{email:?}"), "Email(***)");
        assert_eq!(format!("{:?}", Email::default()), "Email(\"\")");
        assert_eq!(serde_json::to_string(&email).unwrap(), "\"buyer@example.com\"", "stored as given");
        assert_eq!(email.expose(), "buyer@example.com");
    }
}
