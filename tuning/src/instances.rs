//! The EC2 instance table `plan` sizes against.
//!
//! Sources (AWS documentation):
//! - vCPUs, memory, network: "Amazon EC2 instance type specifications", general purpose
//!   <https://docs.aws.amazon.com/ec2/latest/instancetypes/gp.html> and compute optimized
//!   <https://docs.aws.amazon.com/ec2/latest/instancetypes/co.html>.
//! - t3 baseline per vCPU, credits earned per hour, maximum balance: "Key concepts and
//!   definitions for burstable performance instances", the credit table
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/burstable-credits-baseline-concepts.html>.
//!   The maximum balance is 24 hours of earnings (the standard-mode example on
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/standard-mode-examples.html>:
//!   a t3.nano "earns 144 credits every 24 hours. Its credit balance limit is 144").
//!
//! Verified with the search tool against those pages: the credit rule (1 credit = 1 vCPU at
//! 100 % for 1 minute), t3.nano's 144 maximum, t3.small's 20 % and 24 credits/h, and the
//! 5 Gbps "up to" burst of t3. Not verified (written from the AWS specification tables
//! without a page excerpt to check them against): the network baseline figures, and c7i's
//! and m6i's rows. `docs/CAPACITY.md` repeats this.

/// t3 and the other burstable kinds: what the credit arithmetic needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Burst {
    /// Baseline utilisation per vCPU, percent.
    pub baseline_percent_per_vcpu: f64,
    pub credits_per_hour: f64,
    pub credits_max: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Instance {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_gib: f64,
    pub network_baseline_gbps: f64,
    pub network_burst_gbps: f64,
    /// `None` for fixed-performance kinds.
    pub burst: Option<Burst>,
}

const fn t3(
    name: &'static str,
    vcpus: u32,
    memory_gib: f64,
    baseline_percent_per_vcpu: f64,
    credits_per_hour: f64,
    network_baseline_gbps: f64,
) -> Instance {
    Instance {
        name,
        vcpus,
        memory_gib,
        network_baseline_gbps,
        network_burst_gbps: 5.0,
        burst: Some(Burst {
            baseline_percent_per_vcpu,
            credits_per_hour,
            credits_max: credits_per_hour * 24.0,
        }),
    }
}

const fn fixed(
    name: &'static str,
    vcpus: u32,
    memory_gib: f64,
    baseline: f64,
    burst: f64,
) -> Instance {
    Instance {
        name,
        vcpus,
        memory_gib,
        network_baseline_gbps: baseline,
        network_burst_gbps: burst,
        burst: None,
    }
}

pub const TABLE: [Instance; 9] = [
    t3("t3.nano", 2, 0.5, 5.0, 6.0, 0.032),
    t3("t3.micro", 2, 1.0, 10.0, 12.0, 0.064),
    t3("t3.small", 2, 2.0, 20.0, 24.0, 0.128),
    t3("t3.medium", 2, 4.0, 20.0, 24.0, 0.256),
    t3("t3.large", 2, 8.0, 30.0, 36.0, 0.512),
    t3("t3.xlarge", 4, 16.0, 40.0, 96.0, 1.024),
    fixed("c6i.large", 2, 4.0, 0.781, 12.5),
    fixed("c7i.large", 2, 4.0, 0.781, 12.5),
    fixed("m6i.large", 2, 8.0, 0.781, 12.5),
];

pub fn find(name: &str) -> Option<&'static Instance> {
    TABLE.iter().find(|i| i.name == name)
}

pub fn names() -> String {
    TABLE.iter().map(|i| i.name).collect::<Vec<_>>().join(", ")
}

impl Instance {
    pub fn memory_bytes(&self) -> f64 {
        self.memory_gib * f64::from(1u32 << 30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures the issue states for t3.small: 2 vCPUs, 20 % per vCPU, 24 credits/h, 576.
    #[test]
    fn t3_small_is_as_documented() {
        let t = find("t3.small").unwrap();
        let b = t.burst.unwrap();
        assert_eq!((t.vcpus, t.memory_gib), (2, 2.0));
        assert_eq!(
            (
                b.baseline_percent_per_vcpu,
                b.credits_per_hour,
                b.credits_max
            ),
            (20.0, 24.0, 576.0)
        );
    }

    /// Credits earned per hour = vCPUs × baseline × 60 minutes, for every t3 row.
    #[test]
    fn credits_per_hour_match_the_baseline() {
        for i in TABLE.iter().filter(|i| i.burst.is_some()) {
            let b = i.burst.unwrap();
            let earned = f64::from(i.vcpus) * b.baseline_percent_per_vcpu / 100.0 * 60.0;
            assert!((earned - b.credits_per_hour).abs() < 1e-9, "{}", i.name);
        }
    }
}
