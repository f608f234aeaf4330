//! The spend ledger: a budget, what was spent, and what in-flight requests
//! have reserved.
//!
//! Invariants:
//! - Admission: [`Ledger::reserve`] grants an estimate only if
//!   `spent + reserved + estimate <= budget`, checked and applied under one
//!   lock, so concurrent requests cannot all pass one check. Spend can pass
//!   the budget only by what settled requests cost beyond their estimates.
//! - Every [`Reservation`] is released exactly once: settled with the real
//!   cost ([`Ledger::settle`]), charged in full ([`Ledger::charge_reservation`],
//!   a stream that broke without usage), or — if it is dropped unreleased (a
//!   cancelled or panicked request) — charged in full by its `Drop`.
//! - A reservation always settles against the ledger that issued it.
//! - Amounts are [`PicoUsd`]; arithmetic saturates, never wraps.
//! - The lock guards plain integers updated without any call that can panic,
//!   so a poisoned lock still holds a consistent state and is used as is.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::money::PicoUsd;

#[derive(Debug, Default, Clone, Copy)]
struct State {
    spent: PicoUsd,
    reserved: PicoUsd,
}

#[derive(Debug)]
struct Inner {
    budget: PicoUsd,
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Release `reserved` and add `cost` to the spend.
    fn release(&self, reserved: PicoUsd, cost: PicoUsd) -> Settlement {
        let mut state = self.lock();
        state.reserved = state.reserved.saturating_sub(reserved);
        state.spent = state.spent.saturating_add(cost);
        Settlement {
            cost,
            reserved,
            spent: state.spent,
            budget: self.budget,
        }
    }
}

/// A run's spend budget. Cloning gives another handle to the same ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

/// A snapshot of a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub budget: PicoUsd,
    pub spent: PicoUsd,
    pub reserved: PicoUsd,
}

/// A request refused because its estimate does not fit in the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "spend budget ${budget} exceeded: spent ${spent} + reserved ${reserved} + estimate ${estimate}"
)]
pub struct BudgetExceeded {
    pub budget: PicoUsd,
    pub spent: PicoUsd,
    pub reserved: PicoUsd,
    pub estimate: PicoUsd,
}

/// Money set aside for one in-flight request. Release it with
/// [`Ledger::settle`] or [`Ledger::charge_reservation`]; dropping it charges
/// it in full.
#[derive(Debug)]
#[must_use = "a dropped reservation is charged in full"]
pub struct Reservation {
    inner: Arc<Inner>,
    amount: PicoUsd,
    released: bool,
}

impl Reservation {
    pub fn amount(&self) -> PicoUsd {
        self.amount
    }

    fn release(mut self, cost: PicoUsd) -> Settlement {
        self.released = true;
        self.inner.release(self.amount, cost)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.released {
            self.released = true;
            self.inner.release(self.amount, self.amount);
        }
    }
}

/// The ledger after a request was paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// What this request was charged.
    pub cost: PicoUsd,
    /// What it had reserved.
    pub reserved: PicoUsd,
    /// Total spend so far, this request included.
    pub spent: PicoUsd,
    pub budget: PicoUsd,
}

impl Settlement {
    /// The budget is used up: the run's violation action applies
    /// (`budget_exceeded`).
    pub fn budget_reached(&self) -> bool {
        self.spent >= self.budget
    }
}

impl Ledger {
    pub fn new(budget: PicoUsd) -> Ledger {
        Ledger {
            inner: Arc::new(Inner {
                budget,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn budget(&self) -> PicoUsd {
        self.inner.budget
    }

    pub fn balance(&self) -> Balance {
        let state = *self.inner.lock();
        Balance {
            budget: self.inner.budget,
            spent: state.spent,
            reserved: state.reserved,
        }
    }

    /// Set `estimate` aside, or refuse when `spent + reserved + estimate`
    /// would pass the budget.
    pub fn reserve(&self, estimate: PicoUsd) -> Result<Reservation, BudgetExceeded> {
        let mut state = self.inner.lock();
        let committed = state.spent.saturating_add(state.reserved);
        if committed.saturating_add(estimate) > self.inner.budget
            || committed.0.checked_add(estimate.0).is_none()
        {
            return Err(BudgetExceeded {
                budget: self.inner.budget,
                spent: state.spent,
                reserved: state.reserved,
                estimate,
            });
        }
        state.reserved = state.reserved.saturating_add(estimate);
        drop(state);
        Ok(Reservation {
            inner: Arc::clone(&self.inner),
            amount: estimate,
            released: false,
        })
    }

    /// Release `reservation` and charge the real cost of the request.
    pub fn settle(&self, reservation: Reservation, actual: PicoUsd) -> Settlement {
        reservation.release(actual)
    }

    /// Release `reservation` by charging it in full (a response that ended
    /// without usage).
    pub fn charge_reservation(&self, reservation: Reservation) -> Settlement {
        let amount = reservation.amount;
        reservation.release(amount)
    }
}

#[cfg(test)]
mod tests;
