use std::sync::{Arc, Barrier};
use std::thread;

use super::*;

fn usd(s: &str) -> PicoUsd {
    PicoUsd::parse_usd(s).unwrap()
}

#[test]
fn reserve_refuses_past_the_budget() {
    let ledger = Ledger::new(usd("1"));
    let a = ledger.reserve(usd("0.60")).unwrap();
    let refused = ledger.reserve(usd("0.41")).unwrap_err();
    assert_eq!(
        refused,
        BudgetExceeded {
            budget: usd("1"),
            spent: usd("0"),
            reserved: usd("0.60"),
            estimate: usd("0.41"),
        }
    );
    assert!(refused.to_string().contains("$1.00"), "{refused}");
    // Exactly up to the budget is allowed.
    let b = ledger.reserve(usd("0.40")).unwrap();
    assert_eq!(
        ledger.balance(),
        Balance {
            budget: usd("1"),
            spent: usd("0"),
            reserved: usd("1")
        }
    );
    // Settling below the estimate frees the difference.
    let s = ledger.settle(a, usd("0.10"));
    assert_eq!(
        (s.cost, s.reserved, s.spent),
        (usd("0.10"), usd("0.60"), usd("0.10"))
    );
    assert!(!s.budget_reached());
    assert!(ledger.reserve(usd("0.50")).is_ok()); // dropped: charged in full
    assert_eq!(ledger.balance().spent, usd("0.60"));
    let s = ledger.charge_reservation(b);
    assert_eq!((s.cost, s.spent), (usd("0.40"), usd("1")));
    assert!(s.budget_reached());
    assert_eq!(ledger.balance().reserved, PicoUsd::ZERO);
    assert!(ledger.reserve(PicoUsd(1)).is_err());
}

#[test]
fn settlement_above_the_estimate_is_charged() {
    let ledger = Ledger::new(usd("1"));
    let r = ledger.reserve(usd("0.90")).unwrap();
    assert_eq!(r.amount(), usd("0.90"));
    let s = ledger.settle(r, usd("1.20"));
    assert_eq!(s.spent, usd("1.20"));
    assert!(s.budget_reached());
    // Over budget: even a zero estimate is refused.
    assert!(ledger.reserve(PicoUsd::ZERO).is_err());
}

#[test]
fn overflow_is_refused_not_wrapped() {
    let ledger = Ledger::new(PicoUsd::MAX);
    let _a = ledger.reserve(PicoUsd(u64::MAX - 1)).unwrap();
    assert!(ledger.reserve(PicoUsd(2)).is_err());
    assert!(ledger.reserve(PicoUsd::MAX).is_err());
}

#[test]
fn clones_share_the_ledger() {
    let ledger = Ledger::new(usd("1"));
    let other = ledger.clone();
    let r = other.reserve(usd("0.5")).unwrap();
    assert_eq!(ledger.balance().reserved, usd("0.5"));
    ledger.settle(r, usd("0.25"));
    assert_eq!(other.balance().spent, usd("0.25"));
}

/// 20 threads race to reserve against a budget for 5 requests at once:
/// exactly 5 get through (a check-then-charge ledger would let all 20).
#[test]
fn simultaneous_reservations_respect_the_budget() {
    let est = usd("0.01");
    let ledger = Ledger::new(usd("0.05"));
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (ledger, barrier) = (ledger.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let r = ledger.reserve(est);
                barrier.wait(); // hold every reservation until all tried
                r.map(|r| ledger.settle(r, est)).is_ok()
            })
        })
        .collect();
    let granted = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(granted, 5);
    assert_eq!(ledger.balance().spent, usd("0.05"));
}

/// 20 threads reserve and settle (real cost at or below the estimate, or a
/// broken stream charged its reservation) until refused: the spend never
/// passes the budget by more than one reservation, and reservations never
/// leak.
#[test]
fn concurrent_spend_never_overshoots() {
    let est = usd("0.003");
    let budget = usd("1");
    let ledger = Ledger::new(budget);
    let handles: Vec<_> = (0..20u64)
        .map(|t| {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                let mut spent_by_me = PicoUsd::ZERO;
                let mut refusals = 0;
                while refusals < 50 {
                    let Ok(r) = ledger.reserve(est) else {
                        refusals += 1;
                        thread::yield_now();
                        continue;
                    };
                    n += 1;
                    let balance = ledger.balance();
                    assert!(balance.spent.saturating_add(balance.reserved) <= budget);
                    // Deterministic pseudo-random outcome per request.
                    let cost = match (t * 7919 + n * 104_729) % 5 {
                        // A stream that broke without usage.
                        0 => ledger.charge_reservation(r).cost,
                        // A request task that was cancelled: Drop charges.
                        1 => {
                            drop(r);
                            est
                        }
                        k => ledger.settle(r, PicoUsd(est.0 / k)).cost,
                    };
                    spent_by_me = spent_by_me.saturating_add(cost);
                }
                spent_by_me
            })
        })
        .collect();
    let total = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold(PicoUsd::ZERO, PicoUsd::saturating_add);
    let balance = ledger.balance();
    assert_eq!(balance.reserved, PicoUsd::ZERO);
    assert_eq!(balance.spent, total);
    assert!(balance.spent <= budget.saturating_add(est), "{balance:?}");
    // And the budget was actually used (the refusals are real).
    assert!(balance.spent.saturating_add(est) > budget, "{balance:?}");
}
