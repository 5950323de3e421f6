//! Client-side rate limit: evenly spaced requests at a rate that halves when
//! the API says `LimitExceeded` and climbs back gradually (AIMD).

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Share of the ceiling regained per second after a cut.
const RECOVERY_PER_SECOND: f64 = 0.1;
/// Never slower than this, however often the API pushes back.
const FLOOR_PER_SECOND: f64 = 0.2;

#[derive(Debug)]
pub struct RateLimiter {
    ceiling: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    next_slot: Instant,
    last_update: Instant,
}

impl RateLimiter {
    /// `per_second` is the ceiling the limiter never exceeds.
    pub fn new(per_second: f64) -> Self {
        let per_second = per_second.max(FLOOR_PER_SECOND);
        let now = Instant::now();
        RateLimiter {
            ceiling: per_second,
            state: Mutex::new(State {
                rate: per_second,
                next_slot: now,
                last_update: now,
            }),
        }
    }

    fn recover(&self, s: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(s.last_update).as_secs_f64();
        s.rate = (s.rate + self.ceiling * RECOVERY_PER_SECOND * elapsed).min(self.ceiling);
        s.last_update = now;
    }

    /// Wait for the next slot. Slots are `1/rate` apart, so no window of one
    /// second ever holds more than `ceiling + 1` requests.
    pub async fn acquire(&self) {
        let slot = {
            let mut s = self.state.lock().expect("rate limiter lock");
            let now = Instant::now();
            self.recover(&mut s, now);
            let slot = s.next_slot.max(now);
            s.next_slot = slot + Duration::from_secs_f64(1.0 / s.rate);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Wait until `n` consecutive slots are ours: the requests that use them
    /// then go one right after the other (the last slot's time is waited for).
    pub async fn acquire_n(&self, n: u32) {
        let last = {
            let mut s = self.state.lock().expect("rate limiter lock");
            let now = Instant::now();
            self.recover(&mut s, now);
            let first = s.next_slot.max(now);
            let step = Duration::from_secs_f64(1.0 / s.rate);
            s.next_slot = first + step * n.max(1);
            first + step * (n.max(1) - 1)
        };
        tokio::time::sleep_until(last).await;
    }

    /// The API refused a request for speed: halve the rate.
    pub fn on_limit_exceeded(&self) {
        let mut s = self.state.lock().expect("rate limiter lock");
        let now = Instant::now();
        self.recover(&mut s, now);
        s.rate = (s.rate / 2.0).max(FLOOR_PER_SECOND);
        // Slots already handed out keep their time; the next one is spaced at the new rate.
        s.next_slot = s.next_slot.max(now) + Duration::from_secs_f64(1.0 / s.rate);
    }

    /// The current rate, requests per second.
    pub fn current_rate(&self) -> f64 {
        let mut s = self.state.lock().expect("rate limiter lock");
        self.recover(&mut s, Instant::now());
        s.rate
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_at_the_ceiling() {
        let rl = RateLimiter::new(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            rl.acquire().await;
        }
        // 21 slots at 10/s: the first is immediate, the last at 2.0 s.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.99..2.01).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn halves_on_limit_exceeded_and_recovers_gradually() {
        let rl = RateLimiter::new(10.0);
        rl.on_limit_exceeded();
        assert!((rl.current_rate() - 5.0).abs() < 1e-9);
        rl.on_limit_exceeded();
        assert!((rl.current_rate() - 2.5).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(2)).await;
        // +10% of the ceiling per second.
        assert!(
            (rl.current_rate() - 4.5).abs() < 1e-6,
            "{}",
            rl.current_rate()
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!((rl.current_rate() - 10.0).abs() < 1e-9);
    }

    /// Defect 19: the check and the delete take their slots together; the
    /// delete then waits for nothing.
    #[tokio::test(start_paused = true)]
    async fn reserved_slots_are_taken_together() {
        let rl = RateLimiter::new(2.0);
        let start = Instant::now();
        rl.acquire().await; // slot at 0 s
        rl.acquire_n(2).await; // slots at 0.5 s and 1.0 s: returns at 1.0 s
        let t = start.elapsed().as_secs_f64();
        assert!((0.99..1.01).contains(&t), "{t}");
        rl.acquire().await; // the next slot: 1.5 s
        let t = start.elapsed().as_secs_f64();
        assert!((1.49..1.51).contains(&t), "{t}");
    }

    #[tokio::test(start_paused = true)]
    async fn never_below_the_floor() {
        let rl = RateLimiter::new(1.0);
        for _ in 0..20 {
            rl.on_limit_exceeded();
        }
        assert!((rl.current_rate() - FLOOR_PER_SECOND).abs() < 1e-9);
    }
}
