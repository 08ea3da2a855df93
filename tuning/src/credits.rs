//! t3 CPU credits. One credit is one vCPU at 100 % for one minute, so an instance using `u`
//! vCPUs spends `60·u` credits an hour and earns its fixed rate (t3.small: 24 an hour, its
//! baseline 2 vCPUs × 20 % = 0.4 vCPU). Above the baseline the balance drains at the
//! difference; in `unlimited` mode the credits spent past the balance are "surplus" credits,
//! charged per vCPU-hour.
//!
//! The price: $0.05 per vCPU-hour for T3 Linux surplus credits, "T2/T3/T4g Unlimited Mode
//! Pricing" on <https://aws.amazon.com/ec2/pricing/on-demand/> (the AWS launch post of T3
//! states the same $0.05 per vCPU-hour; T4g's is $0.04).

use crate::instances::Burst;

pub const SURPLUS_USD_PER_VCPU_HOUR: f64 = 0.05;
pub const MINUTES_PER_HOUR: f64 = 60.0;

/// The vCPUs the instance may use forever: its credits earned per hour ÷ 60.
pub fn baseline_vcpus(b: &Burst) -> f64 {
    b.credits_per_hour / MINUTES_PER_HOUR
}

/// Credits spent minus earned per hour at `used_vcpus` (negative: the balance grows).
pub fn drain_per_hour(b: &Burst, used_vcpus: f64) -> f64 {
    MINUTES_PER_HOUR * used_vcpus - b.credits_per_hour
}

/// Hours a burst at `used_vcpus` lasts from `balance` credits; `None` when the load is at
/// or below the baseline (it lasts for ever).
pub fn burst_hours(b: &Burst, used_vcpus: f64, balance: f64) -> Option<f64> {
    let drain = drain_per_hour(b, used_vcpus);
    (drain > 0.0).then(|| balance / drain)
}

/// Surplus credits over `hours` in `unlimited` mode: what the load spends beyond what the
/// instance earns and the balance it starts with.
pub fn surplus_credits(b: &Burst, used_vcpus: f64, balance: f64, hours: f64) -> f64 {
    (drain_per_hour(b, used_vcpus) * hours - balance).max(0.0)
}

/// Dollars for those surplus credits (60 credits = one vCPU-hour).
pub fn surplus_cost_usd(b: &Burst, used_vcpus: f64, balance: f64, hours: f64) -> f64 {
    surplus_credits(b, used_vcpus, balance, hours) / MINUTES_PER_HOUR * SURPLUS_USD_PER_VCPU_HOUR
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::find;

    fn small() -> Burst {
        find("t3.small").unwrap().burst.unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// t3.small earns 24 credits/h = 24 vCPU-minutes per 60 minutes = 0.4 vCPU.
    #[test]
    fn baseline_is_two_vcpus_at_twenty_percent() {
        assert!(close(baseline_vcpus(&small()), 0.4));
    }

    /// One full vCPU: spends 60/h, earns 24/h, drains 36/h; 576 / 36 = 16 hours.
    /// Both vCPUs: spends 120/h, drains 96/h; 576 / 96 = 6 hours.
    /// 0.7 vCPU: spends 42/h, drains 18/h; a balance of 90 lasts 90 / 18 = 5 hours.
    #[test]
    fn burst_lasts_balance_over_drain() {
        let b = small();
        assert!(close(burst_hours(&b, 1.0, 576.0).unwrap(), 16.0));
        assert!(close(burst_hours(&b, 2.0, 576.0).unwrap(), 6.0));
        assert!(close(burst_hours(&b, 0.7, 90.0).unwrap(), 5.0));
    }

    /// At 0.4 vCPU spent = earned (24/h); at 0.3 the balance grows: no end to the burst.
    #[test]
    fn at_or_below_baseline_lasts_for_ever() {
        assert_eq!(burst_hours(&small(), 0.4, 576.0), None);
        assert_eq!(burst_hours(&small(), 0.3, 0.0), None);
    }

    /// 1 vCPU for 24 h from 576: drains 36 × 24 = 864, minus 576 = 288 surplus credits
    /// = 288 / 60 = 4.8 vCPU-hours × $0.05 = $0.24.
    /// 2 vCPUs for 24 h from 0: 96 × 24 = 2304 credits = 38.4 vCPU-h = $1.92.
    /// 1 vCPU for 10 h from 576: 360 < 576, no surplus, $0.
    #[test]
    fn unlimited_mode_charges_the_surplus() {
        let b = small();
        assert!(close(surplus_credits(&b, 1.0, 576.0, 24.0), 288.0));
        assert!(close(surplus_cost_usd(&b, 1.0, 576.0, 24.0), 0.24));
        assert!(close(surplus_cost_usd(&b, 2.0, 0.0, 24.0), 1.92));
        assert!(close(surplus_cost_usd(&b, 1.0, 576.0, 10.0), 0.0));
    }
}
