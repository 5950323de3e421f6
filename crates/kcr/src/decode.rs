//! Tolerant decoding of what KCR actually returns (DESIGN §3 quirks): ids as
//! number or string, counts as strings, `null` for strings and lists, zone-less times.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The layout KCR writes times in (no zone; Beijing time unless configured otherwise).
pub const KCR_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// A time as the API wrote it. Most are zone-less wall-clock times; a zoned
/// RFC 3339 time is accepted too, should the API ever send one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum KcrTime {
    Local(NaiveDateTime),
    Zoned(DateTime<FixedOffset>),
}

impl KcrTime {
    /// Interpret the time in `tz` (the API's zone) and convert it to UTC.
    /// When the wall-clock time is ambiguous (a repeated daylight-saving hour)
    /// or does not exist (a skipped one), the latest instant it can stand for
    /// is taken: the image then looks younger, the safe side for retention.
    pub fn to_utc(self, tz: &Tz) -> DateTime<Utc> {
        match self {
            KcrTime::Zoned(t) => t.with_timezone(&Utc),
            KcrTime::Local(naive) => match tz.from_local_datetime(&naive).latest() {
                Some(t) => t.with_timezone(&Utc),
                // In a gap: read with the smallest offset in force around it
                // (the one before a spring-forward), which gives the latest instant.
                None => {
                    let as_utc = Utc.from_utc_datetime(&naive);
                    let day = chrono::Duration::days(1);
                    [as_utc - day, as_utc, as_utc + day]
                        .iter()
                        .map(|t| {
                            use chrono::Offset;
                            let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
                            as_utc - chrono::Duration::seconds(offset.local_minus_utc().into())
                        })
                        .max()
                        .unwrap_or(as_utc)
                }
            },
        }
    }

    pub fn parse(s: &str) -> Option<KcrTime> {
        let s = s.trim();
        if let Ok(t) = NaiveDateTime::parse_from_str(s, KCR_TIME_FORMAT) {
            return Some(KcrTime::Local(t));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(KcrTime::Zoned(t));
        }
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
            .ok()
            .map(KcrTime::Local)
    }
}

impl fmt::Display for KcrTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KcrTime::Local(t) => write!(f, "{}", t.format(KCR_TIME_FORMAT)),
            KcrTime::Zoned(t) => write!(f, "{}", t.to_rfc3339()),
        }
    }
}

/// `null`, `""` or a missing field → `None`; otherwise a KCR time.
pub fn opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KcrTime>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => KcrTime::parse(s)
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("unrecognised time {s:?}"))),
    }
}

struct StringOrNumber;

impl Visitor<'_> for StringOrNumber {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// An id that the API sends as a string or as a number.
pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(StringOrNumber)
}

/// An optional id: `null` or missing → `None`.
pub fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "id")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

struct Count;

impl<'de> Visitor<'de> for Count {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer, as a number or a string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map(Some)
            .map_err(|_| E::custom("negative count"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
            Ok(Some(v as u64))
        } else {
            Err(E::custom("count is not a whole number"))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| E::custom("count string is not a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(Count)
    }
}

/// A count sent as a number or a numeric string (`"RepoCount": "1"`); `null` → 0.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(d.deserialize_any(Count)?.unwrap_or(0))
}

/// An optional count: `null` or missing → `None`.
pub fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(Count)
}

struct Flag;

impl<'de> Visitor<'de> for Flag {
    type Value = Option<bool>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean, as true/false, \"True\"/\"False\" or 0/1")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match v {
            0 => Ok(Some(false)),
            1 => Ok(Some(true)),
            _ => Err(E::custom("boolean number other than 0 or 1")),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visit_u64(u64::try_from(v).map_err(|_| E::custom("negative boolean"))?)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            "" => Ok(None),
            _ => Err(E::custom("unrecognised boolean string")),
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(Flag)
    }
}

/// A boolean in any of the forms the API or SDKs produce; `null` → false.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(d.deserialize_any(Flag)?.unwrap_or(false))
}

/// An optional boolean; `null` or missing → `None`.
pub fn opt_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    d.deserialize_any(Flag)
}

/// `null` where a list (or any defaultable value) is expected → the default.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Probe {
        #[serde(default, deserialize_with = "id")]
        id: String,
        #[serde(default, deserialize_with = "count")]
        n: u64,
        #[serde(default, deserialize_with = "flag")]
        b: bool,
        #[serde(default, deserialize_with = "opt_time")]
        t: Option<KcrTime>,
        #[serde(default, deserialize_with = "null_default")]
        list: Vec<String>,
    }

    fn probe(json: &str) -> Probe {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ids_as_numbers_or_strings() {
        assert_eq!(probe(r#"{"id": 7}"#).id, "7");
        assert_eq!(probe(r#"{"id": "7"}"#).id, "7");
    }

    #[test]
    fn counts_as_strings_numbers_or_null() {
        assert_eq!(probe(r#"{"n": "12"}"#).n, 12);
        assert_eq!(probe(r#"{"n": 12}"#).n, 12);
        assert_eq!(probe(r#"{"n": null}"#).n, 0);
        assert!(serde_json::from_str::<Probe>(r#"{"n": "x"}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"n": -1}"#).is_err());
    }

    #[test]
    fn booleans_in_every_form() {
        for (j, want) in [
            ("true", true),
            ("\"True\"", true),
            ("\"false\"", false),
            ("0", false),
            ("1", true),
            ("null", false),
        ] {
            assert_eq!(probe(&format!(r#"{{"b": {j}}}"#)).b, want, "{j}");
        }
    }

    #[test]
    fn null_lists_and_unknown_fields() {
        let p = probe(r#"{"list": null, "Unknown": {"x": 1}}"#);
        assert!(p.list.is_empty());
    }

    #[test]
    fn zone_less_times_are_beijing_by_default() {
        let p = probe(r#"{"t": "2022-06-20 16:02:09"}"#);
        let utc = p.t.unwrap().to_utc(&chrono_tz::Asia::Shanghai);
        assert_eq!(utc.to_rfc3339(), "2022-06-20T08:02:09+00:00");
        let utc = p.t.unwrap().to_utc(&chrono_tz::UTC);
        assert_eq!(utc.to_rfc3339(), "2022-06-20T16:02:09+00:00");
        assert!(probe(r#"{"t": null}"#).t.is_none());
        assert!(probe(r#"{"t": ""}"#).t.is_none());
        let zoned = probe(r#"{"t": "2022-06-20T16:02:09+08:00"}"#).t.unwrap();
        assert_eq!(
            zoned.to_utc(&chrono_tz::UTC).to_rfc3339(),
            "2022-06-20T08:02:09+00:00"
        );
        assert!(serde_json::from_str::<Probe>(r#"{"t": "yesterday"}"#).is_err());
    }

    /// Issue 11 #27: a zone-less time in a repeated hour is the later instant,
    /// one in a skipped hour the latest it can stand for (the image looks younger).
    #[test]
    fn daylight_saving_readings_take_the_later_instant() {
        let ny = chrono_tz::America::New_York;
        let t = |s: &str| KcrTime::parse(s).unwrap().to_utc(&ny).to_rfc3339();
        // 2026-11-01 01:30 happens twice in New York: 05:30Z (EDT) and 06:30Z (EST).
        assert_eq!(t("2026-11-01 01:30:00"), "2026-11-01T06:30:00+00:00");
        // 2026-03-08 02:30 never happens: 06:30Z (EDT) or 07:30Z (EST) — the later.
        assert_eq!(t("2026-03-08 02:30:00"), "2026-03-08T07:30:00+00:00");
        // Ordinary times are unchanged.
        assert_eq!(t("2026-07-01 12:00:00"), "2026-07-01T16:00:00+00:00");
        // Samoa skipped 2011-12-30 whole (UTC-10 → UTC+14): the earlier offset, the later instant.
        let samoa = chrono_tz::Pacific::Apia;
        let u = KcrTime::parse("2011-12-30 12:00:00")
            .unwrap()
            .to_utc(&samoa);
        assert_eq!(u.to_rfc3339(), "2011-12-30T22:00:00+00:00");
    }
}
