//! Schedules as OpenFaaS's cron-connector accepts them (robfig/cron's standard parser): five
//! fields (minute, hour, day of month, month, day of week), the descriptors `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`, and `@every
//! DURATION`; in UTC unless a `CRON_TZ=ZONE ` (or `TZ=ZONE `) prefix names an IANA zone.
//!
//! The fields are parsed by `croner`. `@every` is our own: its firings are aligned to whole
//! multiples of the period since the Unix epoch (robfig counts from when its process started),
//! so every gateway computes the same instants and a tick fires once across them.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The accepted forms, for error messages.
pub const ACCEPTED: &str = "five cron fields (minute hour day-of-month month day-of-week, e.g. \
    \"*/5 * * * *\"), a descriptor (@yearly, @annually, @monthly, @weekly, @daily, @midnight, \
    @hourly) or @every DURATION (e.g. @every 30s, @every 1h30m; at least 1s), optionally after \
    CRON_TZ=ZONE (an IANA time zone; UTC otherwise)";

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written.
    text: String,
    /// When it fires.
    kind: Kind,
    /// The zone its fields are read in.
    zone: TimeZone,
}

/// See [`Schedule`].
#[derive(Debug, Clone)]
enum Kind {
    /// Cron fields.
    Cron(Box<croner::Cron>),
    /// Every so many whole seconds, from the Unix epoch.
    Every(u64),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Schedule {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let (zone, spec) = match trimmed
            .strip_prefix("CRON_TZ=")
            .or_else(|| trimmed.strip_prefix("TZ="))
        {
            Some(rest) => {
                let (name, spec) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| format!("nothing follows the time zone in {text:?}"))?;
                let zone = jiff::tz::db()
                    .get(name)
                    .map_err(|e| format!("unknown time zone {name:?}: {e}"))?;
                (zone, spec.trim())
            }
            None => (TimeZone::UTC, trimmed),
        };
        let kind = if let Some(every) = spec.strip_prefix("@every") {
            let every = every.trim();
            let period = humantime::parse_duration(every)
                .map_err(|e| format!("bad @every duration {every:?}: {e}"))?;
            let secs = period.as_secs();
            if secs == 0 {
                return Err(format!("@every {every} is shorter than 1s"));
            }
            Kind::Every(secs)
        } else {
            let fields = match spec.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
                "@monthly" => "0 0 1 * *".to_string(),
                "@weekly" => "0 0 * * 0".to_string(),
                "@daily" | "@midnight" => "0 0 * * *".to_string(),
                "@hourly" => "0 * * * *".to_string(),
                other if other.starts_with('@') => {
                    return Err(format!("unknown descriptor {spec:?}"));
                }
                _ => spec.to_string(),
            };
            let count = fields.split_whitespace().count();
            if count != 5 {
                return Err(format!("{spec:?} has {count} fields, not 5"));
            }
            let cron = CronParser::builder()
                .seconds(Seconds::Disallowed)
                .year(Year::Disallowed)
                .sloppy_ranges(true)
                .build()
                .parse(&fields)
                .map_err(|e| format!("{spec:?}: {e}"))?;
            Kind::Cron(Box::new(cron))
        };
        Ok(Schedule {
            text: trimmed.to_string(),
            kind,
            zone,
        })
    }

    /// As written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(secs) => {
                let period = i64::try_from(*secs).ok()?;
                let now = t.as_second();
                Timestamp::from_second((now.div_euclid(period) + 1) * period).ok()
            }
            Kind::Cron(cron) => cron
                .find_next_occurrence(&t.to_zoned(self.zone.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
        }
    }

    /// The last firing at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(secs) => {
                let period = i64::try_from(*secs).ok()?;
                Timestamp::from_second(t.as_second().div_euclid(period) * period).ok()
            }
            Kind::Cron(cron) => cron
                .find_previous_occurrence(&t.to_zoned(self.zone.clone()), true)
                .ok()
                .map(|z| z.timestamp()),
        }
    }

    /// The firing before firing `t`.
    pub fn previous_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.latest_at_or_before(t.checked_sub(jiff::SignedDuration::from_secs(1)).ok()?)
    }

    /// The period of an `@every` schedule.
    pub fn every(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every(secs) => Some(Duration::from_secs(secs)),
            Kind::Cron(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn five_fields_and_descriptors_fire_in_utc() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2026-12-07T10:03:00Z")),
            Some(at("2026-12-07T10:05:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-12-07T10:05:00Z")),
            Some(at("2026-12-07T10:05:00Z"))
        );
        assert_eq!(
            s.previous_before(at("2026-12-07T10:05:00Z")),
            Some(at("2026-12-07T10:00:00Z"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(at("2026-12-07T10:00:00Z")),
            Some(at("2026-12-07T11:00:00Z"))
        );
        let midnight = Schedule::parse("@midnight").unwrap();
        assert_eq!(
            midnight.next_after(at("2026-12-07T10:00:00Z")),
            Some(at("2026-12-08T00:00:00Z"))
        );
        // Names, and a start with a step, as robfig accepts them.
        let s = Schedule::parse("5/15 9 * jan-dec mon-fri").unwrap();
        assert_eq!(
            s.next_after(at("2026-12-07T09:06:00Z")),
            Some(at("2026-12-07T09:20:00Z"))
        );
    }

    #[test]
    fn a_zone_moves_the_fields() {
        let s = Schedule::parse("CRON_TZ=Europe/Paris 0 9 * * *").unwrap();
        // 09:00 in Paris is 08:00 UTC in December.
        assert_eq!(
            s.next_after(at("2026-12-07T07:00:00Z")),
            Some(at("2026-12-07T08:00:00Z"))
        );
        assert!(Schedule::parse("TZ=Asia/Tokyo @daily").is_ok());
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let s = Schedule::parse("@every 30s").unwrap();
        assert_eq!(
            s.next_after(at("2026-12-07T10:00:10Z")),
            Some(at("2026-12-07T10:00:30Z"))
        );
        assert_eq!(
            s.next_after(at("2026-12-07T10:00:30Z")),
            Some(at("2026-12-07T10:01:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-12-07T10:00:59Z")),
            Some(at("2026-12-07T10:00:30Z"))
        );
        assert_eq!(
            Schedule::parse("@every 1h30m").unwrap().every(),
            Some(Duration::from_secs(5400))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (bad, says) in [
            ("* * * *", "4 fields"),
            ("0 * * * * *", "6 fields"),
            ("61 * * * *", "61"),
            ("@fortnightly", "unknown descriptor"),
            ("@every 0s", "shorter than 1s"),
            ("@every soon", "bad @every"),
            ("CRON_TZ=Mars/Olympus 0 * * * *", "unknown time zone"),
            ("CRON_TZ=UTC", "nothing follows"),
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
