//! The buyer's profile a checkout may carry for the provider's risk scoring (Paymentwall's User
//! Profile parameters): what it holds and what a valid one is. The provider adapter names and
//! formats the fields for its own protocol.
//!
//! Personal data: it goes into the provider's signed URL and nowhere else (no column of its own,
//! no log line). `Debug` names the fields that are set and shows nothing of their values.

use std::{fmt, net::IpAddr};

use crate::validation::{self, Violations};

/// Free-text profile fields: at most this many characters.
pub const MAX_PROFILE_TEXT: usize = 255;

/// The earliest date a profile may name: 1900-01-01T00:00:00Z.
pub const EARLIEST_SECONDS: i64 = -2_208_988_800;

/// How far past paygate's clock a date may lie (the caller's clock may run a little ahead).
pub const CLOCK_SKEW_SECONDS: i64 = 300;

/// A point in time as the request gave it (a google.protobuf.Timestamp).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProfileTime {
    pub seconds: i64,
    pub nanos: i32,
}

/// Who the buyer is, as far as the merchant knows. Every field is optional: empty text and `None`
/// mean "not given".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RiskProfile {
    pub birthday: Option<ProfileTime>,
    pub sex: String,
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub city: String,
    pub state: String,
    pub address: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    pub zip: String,
    pub history: CustomerHistory,
}

/// The buyer's account at the merchant.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CustomerHistory {
    pub registration_date: Option<ProfileTime>,
    pub membership: String,
    pub membership_date: Option<ProfileTime>,
    /// ISO 3166-1 alpha-2.
    pub registration_country: String,
    pub registration_ip: String,
    pub registration_email: String,
    pub registration_email_verified: Option<bool>,
    pub registration_name: String,
    pub registration_lastname: String,
    pub registration_source: String,
}

impl RiskProfile {
    /// The text fields, by their proto names.
    fn texts(&self) -> [(&'static str, &str); 9] {
        [
            ("sex", &self.sex),
            ("username", &self.username),
            ("firstname", &self.firstname),
            ("lastname", &self.lastname),
            ("city", &self.city),
            ("state", &self.state),
            ("address", &self.address),
            ("country", &self.country),
            ("zip", &self.zip),
        ]
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl CustomerHistory {
    /// The text fields, by their proto names.
    fn texts(&self) -> [(&'static str, &str); 7] {
        [
            ("membership", &self.membership),
            ("registration_country", &self.registration_country),
            ("registration_ip", &self.registration_ip),
            ("registration_email", &self.registration_email),
            ("registration_name", &self.registration_name),
            ("registration_lastname", &self.registration_lastname),
            ("registration_source", &self.registration_source),
        ]
    }

    fn set_fields(&self) -> Vec<&'static str> {
        let mut set: Vec<&'static str> = Vec::new();
        let dates = [("registration_date", self.registration_date), ("membership_date", self.membership_date)];
        set.extend(dates.iter().filter(|(_, d)| d.is_some()).map(|(name, _)| *name));
        set.extend(self.texts().iter().filter(|(_, v)| !v.is_empty()).map(|(name, _)| *name));
        if self.registration_email_verified.is_some() {
            set.push("registration_email_verified");
        }
        set
    }
}

impl fmt::Debug for RiskProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set: Vec<&'static str> = self.birthday.iter().map(|_| "birthday").collect();
        set.extend(self.texts().iter().filter(|(_, v)| !v.is_empty()).map(|(name, _)| *name));
        f.debug_struct("RiskProfile").field("set", &set).field("history", &self.history).finish()
    }
}

impl fmt::Debug for CustomerHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomerHistory").field("set", &self.set_fields()).finish()
    }
}

/// Every problem of a profile, named by its proto path under `customer`. `now_ms` is paygate's
/// clock: no date may lie after it (give or take [`CLOCK_SKEW_SECONDS`]).
pub fn validate(v: &mut Violations, profile: &RiskProfile, now_ms: i64) {
    let now = now_ms.div_euclid(1000);
    date(v, "customer.birthday", profile.birthday, now);
    for (name, value) in profile.texts() {
        validation::text(v, format!("customer.{name}"), value, MAX_PROFILE_TEXT);
    }
    country(v, "customer.country", &profile.country);

    let history = &profile.history;
    date(v, "customer.history.registration_date", history.registration_date, now);
    date(v, "customer.history.membership_date", history.membership_date, now);
    for (name, value) in history.texts() {
        let max = if name == "registration_email" { validation::MAX_EMAIL } else { MAX_PROFILE_TEXT };
        let field = format!("customer.history.{name}");
        if !validation::text(v, &field, value, max) || value.is_empty() {
            continue;
        }
        match name {
            "registration_ip" if value.parse::<IpAddr>().is_err() => v.add(field, "is not an IP address"),
            "registration_email" if !validation::looks_like_email(value) => v.add(field, "is not an e-mail address"),
            _ => {}
        }
    }
    country(v, "customer.history.registration_country", &history.registration_country);
}

fn country(v: &mut Violations, field: &str, value: &str) {
    // Text problems (length, control characters) were named already; one problem per field.
    let named = v.iter().any(|x| x.field == field);
    if !value.is_empty() && !named && !validation::is_country_code(value) {
        v.add(field, "must be two upper-case letters (ISO 3166-1 alpha-2)");
    }
}

fn date(v: &mut Violations, field: &str, value: Option<ProfileTime>, now: i64) {
    let Some(t) = value else { return };
    if !(0..1_000_000_000).contains(&t.nanos) {
        v.add(format!("{field}.nanos"), "must be from 0 to 999,999,999");
    } else if t.seconds < EARLIEST_SECONDS {
        v.add(field, "must not be before 1900-01-01");
    } else if t.seconds > now.saturating_add(CLOCK_SKEW_SECONDS) {
        v.add(field, "must not be in the future");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn at(seconds: i64) -> Option<ProfileTime> {
        Some(ProfileTime { seconds, nanos: 0 })
    }

    fn full() -> RiskProfile {
        RiskProfile {
            birthday: at(631_152_000),
            sex: "female".into(),
            username: "jane_d".into(),
            firstname: "Jane".into(),
            lastname: "Doe".into(),
            city: "Seoul".into(),
            state: "Seoul".into(),
            address: "1 Main St".into(),
            country: "KR".into(),
            zip: "04524".into(),
            history: CustomerHistory {
                registration_date: at(1_600_000_000),
                membership: "gold".into(),
                membership_date: at(1_650_000_000),
                registration_country: "KR".into(),
                registration_ip: "203.0.113.7".into(),
                registration_email: "jane@example.com".into(),
                registration_email_verified: Some(true),
                registration_name: "Jane".into(),
                registration_lastname: "Doe".into(),
                registration_source: "web".into(),
            },
        }
    }

    fn fields(profile: &RiskProfile) -> Vec<String> {
        let mut v = Violations::default();
        validate(&mut v, profile, NOW_MS);
        v.iter().map(|x| format!("{}: {}", x.field, x.description)).collect()
    }

    #[test]
    fn a_full_profile_and_an_empty_one_are_valid() {
        assert_eq!(fields(&full()), Vec::<String>::new());
        assert_eq!(fields(&RiskProfile::default()), Vec::<String>::new());
        let mut v6 = full();
        v6.history.registration_ip = "2001:db8::7".into();
        assert_eq!(fields(&v6), Vec::<String>::new());
    }

    #[test]
    fn each_bad_field_is_named_with_its_problem() {
        type Mutation = Box<dyn Fn(&mut RiskProfile)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "customer.history.registration_ip: is not an IP address",
                Box::new(|p| p.history.registration_ip = "1.2.3".into()),
            ),
            (
                "customer.country: must be two upper-case letters (ISO 3166-1 alpha-2)",
                Box::new(|p| p.country = "kr".into()),
            ),
            (
                "customer.country: must be two upper-case letters (ISO 3166-1 alpha-2)",
                Box::new(|p| p.country = "KOR".into()),
            ),
            (
                "customer.history.registration_country: must be two upper-case letters (ISO 3166-1 alpha-2)",
                Box::new(|p| p.history.registration_country = "Korea".into()),
            ),
            ("customer.city: must be at most 255 characters (got 256)", Box::new(|p| p.city = "c".repeat(256))),
            ("customer.firstname: must not contain control characters", Box::new(|p| p.firstname = "Ja\nne".into())),
            (
                "customer.history.registration_source: must not contain control characters",
                Box::new(|p| p.history.registration_source = "w\0eb".into()),
            ),
            (
                "customer.history.registration_email: is not an e-mail address",
                Box::new(|p| p.history.registration_email = "jane".into()),
            ),
            (
                "customer.history.registration_email: must be at most 254 characters (got 266)",
                Box::new(|p| p.history.registration_email = "j".repeat(254) + "@example.com"),
            ),
            ("customer.birthday: must not be in the future", Box::new(|p| p.birthday = at(1_700_000_301))),
            ("customer.birthday: must not be before 1900-01-01", Box::new(|p| p.birthday = at(EARLIEST_SECONDS - 1))),
            (
                "customer.history.registration_date: must not be in the future",
                Box::new(|p| p.history.registration_date = at(1_800_000_000)),
            ),
            (
                "customer.history.membership_date: must not be in the future",
                Box::new(|p| p.history.membership_date = at(i64::MAX)),
            ),
            (
                "customer.history.registration_date.nanos: must be from 0 to 999,999,999",
                Box::new(|p| p.history.registration_date = Some(ProfileTime { seconds: 0, nanos: -1 })),
            ),
            ("customer.country: must not contain control characters", Box::new(|p| p.country = "K\0".into())),
        ];
        for (expected, mutate) in cases {
            let mut profile = full();
            mutate(&mut profile);
            assert_eq!(fields(&profile), vec![expected.to_owned()]);
        }
        // A few minutes ahead is the caller's clock, not the future.
        let mut profile = full();
        profile.history.registration_date = at(1_700_000_000 + CLOCK_SKEW_SECONDS);
        assert_eq!(fields(&profile), Vec::<String>::new());
    }

    #[test]
    fn debug_names_the_fields_set_and_nothing_of_their_values() {
        let shown = format!("{:?}", full());
        for value in ["female", "jane_d", "Jane", "Doe", "Seoul", "1 Main St", "04524", "gold", "203.0.113.7", "jane@"]
        {
            assert!(!shown.contains(value), "{value} in {shown}");
        }
        assert!(shown.contains("\"birthday\"") && shown.contains("\"registration_ip\""), "{shown}");
        assert_eq!(
            format!("{:?}", RiskProfile::default()),
            "RiskProfile { set: [], history: CustomerHistory { set: [] } }"
        );
    }
}
