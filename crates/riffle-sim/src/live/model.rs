//! The hidden behaviour of users and streamers, and the user model: given a
//! user, a moment and the streams shown to them, which one (if any) they
//! join and for how long.
//!
//! The choice is a multinomial logit: each shown stream has a utility
//!
//! ```text
//! u = 2.0·taste[category] + language match (+0.8 same, −2.0 other)
//!   + affinity[streamer] + quality[streamer]
//!   + repeat_weight · ln(1 + past watches of the streamer)
//!   + popularity_weight · ln(1 + current viewers)
//!   + Gumbel noise
//! ```
//!
//! and not watching at all has utility `outside − 0.6·activity(hour)` plus
//! Gumbel noise; the user takes the largest. A chosen stream is watched
//! for a log-normal time whose median grows with how much the stream beat
//! the outside option. Repeat consumption (users return to the streamers
//! they watched, the dominant behaviour on Twitch per Rappaz et al., RecSys
//! 2021) comes from `repeat_weight`; popularity dynamics (an audience
//! attracts more) from `popularity_weight`.

use std::collections::HashMap;

use serde::Serialize;

use crate::rng::Rng;

/// What the platform knows about one stream when it shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamView {
    pub streamer: u32,
    pub category: u16,
    pub language: u16,
    /// Viewers watching now.
    pub viewers: u32,
}

/// A user's answer to a list of shown streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// Index into the shown list.
    pub index: usize,
    /// How long the user would watch if the stream stays live.
    pub watch_ms: i64,
}

/// One user's hidden truth: what the ranker of the next issue should find.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserProfile {
    pub language: u16,
    /// Taste per category (index = category), summing to 1.
    pub taste: Vec<f32>,
    /// Streamers this user likes in particular, with an extra utility.
    pub favourites: Vec<(u32, f32)>,
    pub repeat_weight: f32,
    pub popularity_weight: f32,
    /// Utility of not watching (pickiness).
    pub outside: f32,
    /// Hour of day (UTC) this user is most active.
    pub peak_hour: u8,
    pub sessions_per_day: f32,
    /// Chat messages per minute watched, at zero engagement.
    pub chattiness: f32,
    /// Gifts per hour watched.
    pub generosity: f32,
}

/// One streamer's hidden truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamerProfile {
    pub category: u16,
    pub language: u16,
    /// Extra utility every viewer sees (how good the streams are).
    pub quality: f32,
    pub streams_per_week: f32,
    /// Hour of day (UTC) this streamer usually goes live.
    pub peak_hour: u8,
    /// Median stream length.
    pub length_ms: i64,
}

/// How many times each user watched each streamer: the state repeat
/// consumption feeds on.
#[derive(Debug, Default, Clone)]
pub struct History {
    watches: HashMap<(u32, u32), u32>,
}

impl History {
    pub fn watches(&self, user: u32, streamer: u32) -> u32 {
        self.watches.get(&(user, streamer)).copied().unwrap_or(0)
    }

    pub fn record(&mut self, user: u32, streamer: u32) {
        *self.watches.entry((user, streamer)).or_insert(0) += 1;
    }

    /// Distinct (user, streamer) pairs watched at least once.
    pub fn pairs(&self) -> usize {
        self.watches.len()
    }
}

/// Relative activity at `hour` for someone whose activity peaks at `peak`:
/// between 0.25 and 1.75, 1 on average over a day.
pub fn diurnal(hour: u32, peak: u8) -> f64 {
    let distance = (hour as f64 - peak as f64) * std::f64::consts::TAU / 24.0;
    1.0 + 0.75 * distance.cos()
}

/// Hour of day (UTC) of an epoch-ms instant.
pub fn hour_of(time_ms: i64) -> u32 {
    (time_ms.rem_euclid(24 * 3_600_000) / 3_600_000) as u32
}

fn gumbel(rng: &mut Rng) -> f64 {
    let u = rng.next_f64().max(1e-300);
    -(-u.ln()).ln()
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut Rng) -> f64 {
    let u1 = rng.next_f64().max(1e-300);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The behaviour of every user and streamer of a simulated platform.
#[derive(Debug, Clone)]
pub struct UserModel {
    pub users: Vec<UserProfile>,
    pub streamers: Vec<StreamerProfile>,
    pub watch_median_ms: i64,
}

impl UserModel {
    /// The deterministic (noise-free) utility of `view` for `user`.
    pub fn utility(&self, user: u32, view: &StreamView, history: &History) -> f64 {
        let profile = &self.users[user as usize];
        let streamer = &self.streamers[view.streamer as usize];
        let taste = profile
            .taste
            .get(view.category as usize)
            .copied()
            .unwrap_or(0.0) as f64;
        let language = if view.language == profile.language {
            0.8
        } else {
            -2.0
        };
        let affinity = profile
            .favourites
            .iter()
            .find(|(s, _)| *s == view.streamer)
            .map_or(0.0, |(_, a)| *a as f64);
        let repeat =
            profile.repeat_weight as f64 * (1.0 + history.watches(user, view.streamer) as f64).ln();
        let popularity = profile.popularity_weight as f64 * (1.0 + view.viewers as f64).ln();
        2.0 * taste + language + affinity + streamer.quality as f64 + repeat + popularity
    }

    /// The utility of watching nothing for `user` at `time_ms`, without
    /// noise: lower in the user's active hours.
    pub fn outside(&self, user: u32, time_ms: i64) -> f64 {
        let profile = &self.users[user as usize];
        profile.outside as f64 - 0.6 * diurnal(hour_of(time_ms), profile.peak_hour)
    }

    /// Which of `shown` (if any) `user` joins at `time_ms`, and for how
    /// long they would watch it. The same answer for the same `rng` state.
    pub fn respond(
        &self,
        user: u32,
        time_ms: i64,
        shown: &[StreamView],
        history: &History,
        rng: &mut Rng,
    ) -> Option<Join> {
        let outside = self.outside(user, time_ms);
        let mut best: Option<(usize, f64, f64)> = None;
        let mut best_total = outside + gumbel(rng);
        for (index, view) in shown.iter().enumerate() {
            let utility = self.utility(user, view, history);
            let total = utility + gumbel(rng);
            if total > best_total {
                best_total = total;
                best = Some((index, utility, total));
            }
        }
        let (index, utility, _) = best?;
        // The median watch grows with how far the stream beat the outside
        // option (capped), spread log-normally.
        let margin = (utility - outside).clamp(-2.0, 3.0);
        let median = self.watch_median_ms as f64 * (0.5 * margin).exp();
        let watch_ms = (median * (0.8 * normal(rng)).exp()).clamp(10_000.0, 12.0 * 3_600_000.0);
        Some(Join {
            index,
            watch_ms: watch_ms as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> UserModel {
        let user = UserProfile {
            language: 0,
            taste: vec![0.9, 0.1],
            favourites: vec![(2, 2.0)],
            repeat_weight: 0.8,
            popularity_weight: 0.3,
            outside: 1.0,
            peak_hour: 20,
            sessions_per_day: 1.0,
            chattiness: 0.1,
            generosity: 0.0,
        };
        let streamer = |category, language| StreamerProfile {
            category,
            language,
            quality: 0.0,
            streams_per_week: 7.0,
            peak_hour: 20,
            length_ms: 7_200_000,
        };
        UserModel {
            users: vec![user],
            streamers: vec![streamer(0, 0), streamer(1, 1), streamer(1, 0)],
            watch_median_ms: 600_000,
        }
    }

    fn view(streamer: u32, model: &UserModel) -> StreamView {
        let s = &model.streamers[streamer as usize];
        StreamView {
            streamer,
            category: s.category,
            language: s.language,
            viewers: 10,
        }
    }

    #[test]
    fn taste_language_favourites_and_repeats_move_utility() {
        let model = model();
        let mut history = History::default();
        let liked = model.utility(0, &view(0, &model), &history);
        let foreign = model.utility(0, &view(1, &model), &history);
        let favourite = model.utility(0, &view(2, &model), &history);
        assert!(liked > foreign, "{liked} {foreign}");
        assert!(favourite > foreign + 2.0, "{favourite} {foreign}");
        history.record(0, 1);
        history.record(0, 1);
        let returning = model.utility(0, &view(1, &model), &history);
        assert!((returning - foreign - 0.8 * 3f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn choices_follow_the_logit_shares() {
        let model = model();
        let history = History::default();
        let shown = [view(0, &model), view(1, &model), view(2, &model)];
        let mut rng = Rng::new(5);
        let mut joined = [0u32; 4];
        let at_peak = 20 * 3_600_000;
        for _ in 0..20_000 {
            match model.respond(0, at_peak, &shown, &history, &mut rng) {
                Some(join) => {
                    joined[join.index] += 1;
                    assert!(join.watch_ms >= 10_000);
                }
                None => joined[3] += 1,
            }
        }
        let utilities: Vec<f64> = shown
            .iter()
            .map(|v| model.utility(0, v, &history))
            .chain([model.outside(0, at_peak)])
            .collect();
        let denominator: f64 = utilities.iter().map(|u| u.exp()).sum();
        for (i, u) in utilities.iter().enumerate() {
            let expected = u.exp() / denominator * 20_000.0;
            let got = joined[i] as f64;
            assert!(
                (got - expected).abs() < 4.0 * expected.sqrt() + 20.0,
                "option {i}: {got} vs {expected:.0} ({joined:?})"
            );
        }
    }

    #[test]
    fn diurnal_averages_one() {
        let mean: f64 = (0..24).map(|h| diurnal(h, 7)).sum::<f64>() / 24.0;
        assert!((mean - 1.0).abs() < 1e-9);
        assert!(diurnal(7, 7) > diurnal(19, 7));
    }
}
