//! Simulated gates.
