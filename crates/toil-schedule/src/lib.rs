//! Daemon schedules: what `#[scheduled("…")]` accepts, parsed when an
//! artifact is built or loaded and evaluated against a clock the caller
//! passes in (Unix milliseconds, UTC). No clock is read here, so schedule
//! math is tested with fake times.
//!
//! Two forms:
//! - **an interval** in humantime syntax (`"5s"`, `"1h 30m"`), at least 1 s.
//!   Ticks fall on multiples of the interval since the Unix epoch, so every
//!   node computes the same fire times: a tick has one identity across the
//!   cluster, whichever node owns the daemon when it falls due;
//! - **a cron expression** of 5 fields (Unix cron: minute hour
//!   day-of-month month day-of-week, day-of-week 0 or 7 = Sunday), or of 6
//!   or 7 fields (Quartz style: seconds first, optional year, day-of-week
//!   1 = Sunday). Names (`MON`, `JAN`) work in both. Read in UTC, or in the
//!   app's configured time zone ([`Schedule::in_timezone`]): `0 9 * * *` in
//!   `Europe/Paris` fires at 09:00 Paris time, summer and winter.

use std::str::FromStr;

use chrono::{TimeZone, Utc};
pub use chrono_tz::Tz;

/// The shortest interval accepted.
pub const MIN_INTERVAL_MS: u64 = 1000;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    expr: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Every { ms: u64 },
    Cron { cron: Box<cron::Schedule>, tz: Tz },
}

/// An IANA time zone name (`Europe/Paris`), for cron schedules.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| format!("{name:?} is not an IANA time zone name (such as \"UTC\" or \"Europe/Paris\")"))
}

/// Why a schedule expression is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty schedule")]
    Empty,
    #[error("interval {expr:?} is shorter than the {MIN_INTERVAL_MS} ms minimum")]
    TooShort { expr: String },
    #[error("{expr:?} is neither an interval (\"5s\", \"1h\") nor a cron expression of 5, 6 or 7 fields: {reason}")]
    Invalid { expr: String, reason: String },
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let invalid = |reason: String| ScheduleError::Invalid { expr: expr.to_string(), reason };
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        match humantime::parse_duration(trimmed) {
            Ok(d) => {
                let ms = u64::try_from(d.as_millis()).map_err(|_| invalid("interval too long".into()))?;
                if ms < MIN_INTERVAL_MS {
                    return Err(ScheduleError::TooShort { expr: expr.to_string() });
                }
                return Ok(Schedule { expr: expr.to_string(), kind: Kind::Every { ms } });
            }
            // Too few fields for cron: the interval's error is the useful one.
            Err(e) if fields.len() < 5 => return Err(invalid(e.to_string())),
            Err(_) => {}
        }
        let quartz = match fields.len() {
            5 => format!("0 {} {} {} {} {}", fields[0], fields[1], fields[2], fields[3], unix_weekdays(fields[4]).map_err(invalid)?),
            6 | 7 => fields.join(" "),
            n => return Err(invalid(format!("{n} fields"))),
        };
        let cron = cron::Schedule::from_str(&quartz).map_err(|e| invalid(e.to_string()))?;
        if cron.after(&Utc.timestamp_opt(0, 0).single().expect("epoch")).next().is_none() {
            return Err(invalid("it never fires".into()));
        }
        Ok(Schedule { expr: expr.to_string(), kind: Kind::Cron { cron: Box::new(cron), tz: Tz::UTC } })
    }

    /// The same schedule with its cron fields read in `tz` (UTC by
    /// default). Intervals do not depend on a time zone.
    pub fn in_timezone(mut self, tz: Tz) -> Schedule {
        if let Kind::Cron { tz: zone, .. } = &mut self.kind {
            *zone = tz;
        }
        self
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `after_ms`, or `None` if there is
    /// none (a cron expression whose years have passed).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every { ms } => {
                let ms = *ms as i64;
                Some((after_ms.div_euclid(ms) + 1) * ms)
            }
            Kind::Cron { cron, tz } => {
                let after = tz.timestamp_millis_opt(after_ms).single()?;
                cron.after(&after).next().map(|t| t.timestamp_millis())
            }
        }
    }

    /// Fire times in `(after_ms, until_ms]`, in order, at most `limit`.
    pub fn between(&self, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = after_ms;
        while out.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= until_ms => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }
}

/// Rewrites a Unix day-of-week field (0 or 7 = Sunday) in the `cron`
/// crate's numbering (1 = Sunday). Names pass through.
fn unix_weekdays(field: &str) -> Result<String, String> {
    let day = |s: &str| -> Result<String, String> {
        match s.parse::<u8>() {
            Ok(n @ 0..=7) => Ok(((n % 7) + 1).to_string()),
            Ok(n) => Err(format!("day of week {n} is not 0-7")),
            Err(_) => Ok(s.to_string()), // a name, or `*`
        }
    };
    let mut parts = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let step = step.map(|s| format!("/{s}")).unwrap_or_default();
        match range.split_once('-') {
            // A range ending on Sunday (7) wraps in the 1-based numbering.
            Some((a, "7")) if a.parse::<u8>().is_ok_and(|a| a > 0) => {
                parts.push(format!("{}-7{step}", day(a)?));
                parts.push("1".to_string());
            }
            Some((a, b)) => parts.push(format!("{}-{}{step}", day(a)?, day(b)?)),
            None => parts.push(format!("{}{step}", day(range)?)),
        }
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn intervals_fall_on_multiples_of_themselves() {
        let s = Schedule::parse("5s").unwrap();
        assert_eq!(s.next_after(0), Some(5000));
        assert_eq!(s.next_after(4999), Some(5000));
        assert_eq!(s.next_after(5000), Some(10_000));
        assert_eq!(s.between(1000, 21_000, 10), vec![5000, 10_000, 15_000, 20_000]);
        assert_eq!(s.between(1000, 21_000, 2).len(), 2);
        assert_eq!(Schedule::parse("1h 30m").unwrap().next_after(0), Some(5_400_000));
        assert_eq!(Schedule::parse("500ms").unwrap_err(), ScheduleError::TooShort { expr: "500ms".into() });
    }

    #[test]
    fn cron_in_every_width_is_utc() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        assert_eq!(hourly.next_after(at("2026-11-25T10:15:00Z")), Some(at("2026-11-25T11:00:00Z")));
        let six = Schedule::parse("30 0 12 * * *").unwrap();
        assert_eq!(six.next_after(at("2026-11-25T12:00:30Z")), Some(at("2026-11-26T12:00:30Z")));
        let seven = Schedule::parse("0 0 0 1 1 * 2030").unwrap();
        assert_eq!(seven.next_after(at("2026-11-25T00:00:00Z")), Some(at("2030-01-01T00:00:00Z")));
        assert_eq!(seven.next_after(at("2030-01-01T00:00:00Z")), None);
    }

    #[test]
    fn unix_weekdays_mean_what_unix_cron_means() {
        // 2026-11-25 is a Wednesday.
        let monday = Schedule::parse("0 9 * * 1").unwrap();
        assert_eq!(monday.next_after(at("2026-11-25T00:00:00Z")), Some(at("2026-11-30T09:00:00Z")));
        for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
            let s = Schedule::parse(sunday).unwrap();
            assert_eq!(s.next_after(at("2026-11-25T00:00:00Z")), Some(at("2026-11-29T09:00:00Z")), "{sunday}");
        }
        let weekend = Schedule::parse("0 9 * * 6-7").unwrap();
        assert_eq!(weekend.between(at("2026-11-25T00:00:00Z"), at("2026-12-01T00:00:00Z"), 9).len(), 2);
        let weekdays = Schedule::parse("0 9 * * 1-5").unwrap();
        assert_eq!(weekdays.between(at("2026-11-23T00:00:00Z"), at("2026-11-30T00:00:00Z"), 9).len(), 5);
    }

    #[test]
    fn bad_expressions_say_why() {
        assert_eq!(Schedule::parse("  ").unwrap_err(), ScheduleError::Empty);
        for bad in ["soon", "61 * * * *", "* * * *", "0 9 * * 8", "1 2 3 4 5 6 7 8"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(matches!(&e, ScheduleError::Invalid { expr, .. } if expr == bad), "{bad}: {e}");
        }
    }

    #[test]
    fn cron_reads_its_fields_in_the_configured_time_zone() {
        let paris = parse_timezone("Europe/Paris").unwrap();
        let nine = Schedule::parse("0 9 * * *").unwrap().in_timezone(paris);
        // 2026-01-15 00:00 UTC: winter, Paris is UTC+1, so 09:00 there is 08:00 UTC.
        let jan_15 = 1_768_435_200_000;
        assert_eq!(nine.next_after(jan_15), Some(jan_15 + 8 * 3_600_000));
        // 2026-07-15 00:00 UTC: summer, UTC+2: 07:00 UTC.
        let jul_15 = 1_784_073_600_000;
        assert_eq!(nine.next_after(jul_15), Some(jul_15 + 7 * 3_600_000));
        // UTC by default; intervals ignore the zone.
        assert_eq!(Schedule::parse("0 9 * * *").unwrap().next_after(jan_15), Some(jan_15 + 9 * 3_600_000));
        assert_eq!(Schedule::parse("5s").unwrap().in_timezone(paris).next_after(1000), Some(5000));
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("not an IANA time zone"));
    }
}
