//! What expires, and when: pure decisions over settings, the clock and partition bounds.

/// A table whose rows expire, and the column that dates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub time_column: &'static str,
    /// On PostgreSQL, partitioned by month of `time_column` (migration 0016): expiry drops whole
    /// partitions. Raw pingbacks are not (their unique key stops a repeat being applied twice, and
    /// PostgreSQL enforces a key only per partition): they expire in batches, as SQLite does.
    pub partitioned: bool,
}

pub const EVENTS: Table = Table { name: "payment_events", time_column: "created_at", partitioned: true };
pub const PINGBACKS: Table = Table { name: "pingbacks", time_column: "last_seen_at", partitioned: false };
pub const DELIVERIES: Table = Table { name: "webhook_deliveries", time_column: "created_at", partitioned: true };
pub const ATTEMPTS: Table = Table { name: "webhook_attempts", time_column: "at", partitioned: true };
pub const AUDIT: Table = Table { name: "audit_events", time_column: "created_at", partitioned: true };

/// Every table that expires. Payments, cancellations and subscriptions are the ledger: never.
pub const TABLES: [Table; 5] = [EVENTS, PINGBACKS, DELIVERIES, ATTEMPTS, AUDIT];

const DAY_MS: i64 = 86_400_000;

/// How many days each kind of data is kept; 0: forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub events_days: u32,
    pub pingbacks_days: u32,
    pub webhook_deliveries_days: u32,
    pub webhook_attempts_days: u32,
    pub audit_days: u32,
}

impl Policy {
    pub fn days(&self, table: &Table) -> u32 {
        match *table {
            EVENTS => self.events_days,
            PINGBACKS => self.pingbacks_days,
            DELIVERIES => self.webhook_deliveries_days,
            ATTEMPTS => self.webhook_attempts_days,
            _ => self.audit_days,
        }
    }

    /// Rows of `table` dated before this (unix ms) have expired at `now`; `None`: kept forever.
    pub fn cutoff(&self, table: &Table, now: i64) -> Option<i64> {
        match self.days(table) {
            0 => None,
            days => Some(now - i64::from(days) * DAY_MS),
        }
    }
}

/// A month's partition: its rows are dated in [from, to) (unix ms, UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Month {
    /// `2027_02`: the partition is `{table}_{suffix}`.
    pub suffix: String,
    pub from: i64,
    pub to: i64,
}

/// The month `now` is in and the `count - 1` after it: the partitions that must exist so that no
/// write finds none (writes are dated by the clock; replicas run this every interval).
pub fn months_from(now: i64, count: u32) -> Vec<Month> {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(now.div_euclid(1000)) else {
        return Vec::new();
    };
    let (mut year, mut month) = (at.year(), at.month());
    let start = |year: i32, month: time::Month| {
        time::Date::from_calendar_date(year, month, 1)
            .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
            .unwrap_or(i64::MAX)
    };
    let mut months = Vec::new();
    for _ in 0..count {
        let (next_year, next) =
            if month == time::Month::December { (year + 1, month.next()) } else { (year, month.next()) };
        months.push(Month {
            suffix: format!("{year:04}_{:02}", month as u8),
            from: start(year, month),
            to: start(next_year, next),
        });
        (year, month) = (next_year, next);
    }
    months
}

/// A partition whose rows are all dated before `cutoff` has expired: its upper bound (exclusive)
/// is at or before the cutoff. A partition with no upper bound (MAXVALUE) never does.
pub fn expired(upper: Option<i64>, cutoff: i64) -> bool {
    upper.is_some_and(|upper| upper <= cutoff)
}

/// The upper bound of a range partition, from PostgreSQL's text of it
/// (`FOR VALUES FROM (MINVALUE) TO ('1801440000000')`); `None` for MAXVALUE or anything else.
pub fn upper_bound(bound: &str) -> Option<i64> {
    let to = bound.split(" TO (").nth(1)?;
    to.trim_end_matches(')').trim_matches('\'').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2027-01-15T12:00:00Z
    const MID_JANUARY: i64 = 1_800_014_400_000;

    #[test]
    fn months_run_from_the_current_one_across_a_year_end() {
        let months = months_from(MID_JANUARY - 31 * DAY_MS, 3);
        let suffixes: Vec<&str> = months.iter().map(|m| m.suffix.as_str()).collect();
        assert_eq!(suffixes, ["2026_12", "2027_01", "2027_02"]);
        assert_eq!(months[0].to, months[1].from, "contiguous");
        assert_eq!(months[1].from, 1_798_761_600_000, "2027-01-01T00:00:00Z");
        assert!(months[1].from <= MID_JANUARY && MID_JANUARY < months[1].to);
        assert_eq!(months[1].to - months[1].from, 31 * DAY_MS);
    }

    #[test]
    fn a_partition_expires_when_all_its_rows_are_older_than_the_retention() {
        let policy = Policy {
            events_days: 400,
            pingbacks_days: 0,
            webhook_deliveries_days: 90,
            webhook_attempts_days: 30,
            audit_days: 1,
        };
        let cutoff = policy.cutoff(&EVENTS, MID_JANUARY).unwrap();
        assert_eq!(cutoff, MID_JANUARY - 400 * DAY_MS);
        assert!(expired(Some(cutoff), cutoff), "its newest possible row is just before the cutoff");
        assert!(!expired(Some(cutoff + 1), cutoff), "a row at the cutoff is still kept");
        assert!(!expired(None, cutoff));
        assert_eq!(policy.cutoff(&PINGBACKS, MID_JANUARY), None, "0 days: kept forever");
        assert_eq!(policy.cutoff(&ATTEMPTS, MID_JANUARY), Some(MID_JANUARY - 30 * DAY_MS));
    }

    #[test]
    fn partition_bounds_are_read_from_postgresql_s_text() {
        assert_eq!(upper_bound("FOR VALUES FROM (MINVALUE) TO ('1801440000000')"), Some(1_801_440_000_000));
        assert_eq!(upper_bound("FOR VALUES FROM ('1') TO ('2')"), Some(2));
        assert_eq!(upper_bound("FOR VALUES FROM ('1') TO (MAXVALUE)"), None);
        assert_eq!(upper_bound("DEFAULT"), None);
    }
}
