//! Predefined filters (the seed's star schema): each filter is a conjunction
//! of conditions on `country`, `ip` (CIDR ranges) and `user_id`, declared in
//! config with an id. A click is counted once per ad and once more per
//! filter it matches.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::{AdFilterConfig, AdsConfig};
use riffle_core::config::ConfigError;
use riffle_core::net::Cidr;
use serde::Serialize;

use crate::store::NO_FILTER;

/// At most this many filters (a click's matches are a 64-bit mask, slot 0
/// being "no filter").
pub const MAX_FILTERS: usize = 63;

/// One compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    pub id: u32,
    pub name: String,
    countries: HashSet<String>,
    ranges: Vec<Cidr>,
    users: HashSet<String>,
}

impl Filter {
    pub fn matches(&self, country: &str, ip: Option<IpAddr>, user_id: &str) -> bool {
        if !self.countries.is_empty() && !self.countries.contains(country) {
            return false;
        }
        if !self.users.is_empty() && !self.users.contains(user_id) {
            return false;
        }
        if !self.ranges.is_empty() {
            let Some(ip) = ip else {
                return false;
            };
            if !self.ranges.iter().any(|range| range.contains(ip)) {
                return false;
            }
        }
        true
    }
}

/// What `GET /v1/ads/filters` lists for one filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterInfo {
    pub id: u32,
    pub name: String,
    pub country: Vec<String>,
    pub ip: Vec<String>,
    pub user_id: Vec<String>,
}

/// The configured filters, in slot order: slot 0 is "no filter" (every
/// click), slot `i ≥ 1` is `filters[i - 1]`.
#[derive(Debug, Clone)]
pub struct FilterSet {
    filters: Vec<Filter>,
    infos: Vec<FilterInfo>,
    needs_ip: bool,
}

impl FilterSet {
    /// Compiles the filters of a validated config.
    pub fn new(config: &AdsConfig) -> Result<FilterSet, ConfigError> {
        Self::from_filters(&config.filters)
    }

    pub fn from_filters(filters: &[AdFilterConfig]) -> Result<FilterSet, ConfigError> {
        if filters.len() > MAX_FILTERS {
            return Err(ConfigError::new(format!(
                "ads.filters: {} filters, at most {MAX_FILTERS} are supported",
                filters.len()
            )));
        }
        let mut compiled = Vec::with_capacity(filters.len());
        for (i, filter) in filters.iter().enumerate() {
            let mut ranges = Vec::new();
            for (j, range) in filter.ip.iter().enumerate() {
                ranges.push(
                    Cidr::parse(range)
                        .map_err(|e| ConfigError::new(format!("ads.filters[{i}].ip[{j}]: {e}")))?,
                );
            }
            compiled.push(Filter {
                id: filter.id,
                name: filter.name.clone(),
                countries: filter.country.iter().cloned().collect(),
                ranges,
                users: filter.user_id.iter().cloned().collect(),
            });
        }
        let infos = filters
            .iter()
            .map(|f| FilterInfo {
                id: f.id,
                name: f.name.clone(),
                country: f.country.clone(),
                ip: f.ip.clone(),
                user_id: f.user_id.clone(),
            })
            .collect();
        Ok(FilterSet {
            needs_ip: compiled.iter().any(|f| !f.ranges.is_empty()),
            filters: compiled,
            infos,
        })
    }

    pub fn infos(&self) -> &[FilterInfo] {
        &self.infos
    }

    /// Number of slots, "no filter" included.
    pub fn slots(&self) -> usize {
        self.filters.len() + 1
    }

    /// The filter id of a slot.
    pub fn id_of_slot(&self, slot: usize) -> u32 {
        if slot == 0 {
            NO_FILTER
        } else {
            self.filters[slot - 1].id
        }
    }

    /// The slot of a filter id, `None` for an unknown id.
    pub fn slot_of(&self, filter_id: u32) -> Option<usize> {
        if filter_id == NO_FILTER {
            return Some(0);
        }
        self.filters
            .iter()
            .position(|f| f.id == filter_id)
            .map(|i| i + 1)
    }

    /// Resolves a `filter` query value: a filter id or a filter name.
    pub fn resolve(&self, value: &str) -> Option<u32> {
        if let Ok(id) = value.parse::<u32>() {
            return self.slot_of(id).map(|_| id);
        }
        self.filters.iter().find(|f| f.name == value).map(|f| f.id)
    }

    /// The slots a click matches, as a bit mask (bit 0, "no filter", is
    /// always set).
    pub fn matches(&self, country: &str, ip: &str, user_id: &str) -> u64 {
        let ip: Option<IpAddr> = if self.needs_ip { ip.parse().ok() } else { None };
        let mut mask = 1u64;
        for (i, filter) in self.filters.iter().enumerate() {
            if filter.matches(country, ip, user_id) {
                mask |= 1 << (i + 1);
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(id: u32, country: &[&str], ip: &[&str], user: &[&str]) -> AdFilterConfig {
        AdFilterConfig {
            id,
            name: format!("f{id}"),
            country: country.iter().map(|s| s.to_string()).collect(),
            ip: ip.iter().map(|s| s.to_string()).collect(),
            user_id: user.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn conjunction_of_conditions() {
        let set = FilterSet::from_filters(&[
            filter(7, &["USA"], &[], &[]),
            filter(9, &["USA", "KOR"], &["10.0.0.0/8"], &[]),
            filter(11, &[], &[], &["u-1", "u-2"]),
        ])
        .unwrap();
        assert_eq!(set.slots(), 4);
        assert_eq!(set.matches("USA", "10.1.2.3", "u-1"), 0b1111);
        assert_eq!(set.matches("USA", "11.1.2.3", "u-3"), 0b0011);
        assert_eq!(set.matches("KOR", "10.1.2.3", "u-3"), 0b0101);
        assert_eq!(set.matches("DEU", "not-an-ip", "u-2"), 0b1001);
        assert_eq!(set.id_of_slot(2), 9);
        assert_eq!(set.slot_of(11), Some(3));
        assert_eq!(set.slot_of(0), Some(0));
        assert_eq!(set.slot_of(8), None);
        assert_eq!(set.resolve("f9"), Some(9));
        assert_eq!(set.resolve("9"), Some(9));
        assert_eq!(set.resolve("8"), None);
        assert_eq!(set.resolve("nope"), None);
    }

    #[test]
    fn bad_cidr_names_the_field() {
        let err = FilterSet::from_filters(&[filter(1, &[], &["10.0.0.1/8"], &[])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration: ads.filters[0].ip[0]: \"10.0.0.1/8\": host bits must be zero"
        );
    }
}
