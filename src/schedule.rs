//! Six-field cron expressions (seconds first), read in a configured zone.
//! Parsed with croner, the parser tokio-cron-scheduler itself uses, so the
//! times `check` prints are the times jobs fire.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use std::fmt;

#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if fields != 6 {
            return Err(format!(
                "cron {text:?} has {fields} fields; expected 6 (seconds minutes hours day-of-month month day-of-week), e.g. \"0 30 3 * * *\""
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            // As tokio-cron-scheduler parses: day-of-month AND day-of-week.
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map_err(|e| format!("invalid cron {text:?}: {e}"))?;
        Ok(Schedule {
            text: text.to_owned(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The next `n` fire times strictly after `after`, computed in `tz`.
    pub fn next_times(&self, after: DateTime<Utc>, tz: &Tz, n: usize) -> Vec<DateTime<Tz>> {
        self.cron
            .iter_after(after.with_timezone(tz))
            .take(n)
            .collect()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn six_fields_required() {
        assert!(Schedule::parse("0 30 3 * * *").is_ok());
        assert!(
            Schedule::parse("30 3 * * *")
                .unwrap_err()
                .contains("5 fields")
        );
        assert!(
            Schedule::parse("0 61 3 * * *")
                .unwrap_err()
                .contains("invalid cron")
        );
    }

    #[test]
    fn next_times_in_zone() {
        let s = Schedule::parse("0 30 3 * * *").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let next = s.next_times(after, &shanghai, 3);
        // 12:00 UTC is 20:00 in Shanghai; next 03:30 there is 19:30 UTC.
        assert_eq!(
            next[0].with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 11, 22, 19, 30, 0).unwrap()
        );
        assert_eq!(next.len(), 3);
        assert_eq!((next[1] - next[0]).num_hours(), 24);
        let every10 =
            Schedule::parse("0 */10 * * * *")
                .unwrap()
                .next_times(after, &chrono_tz::UTC, 2);
        assert_eq!(
            every10[0].with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 11, 22, 12, 10, 0).unwrap()
        );
    }
}
