//! Test doubles, built only with the `test-util` feature: the power-cut simulator
//! (`powercut`: members that really lose unflushed writes) and fault injectors (`fault`:
//! members that fail, stall or corrupt on cue), and the serial-flush switch that makes a
//! simulated crash replay exactly from its seed.

pub mod fault;
pub mod powercut;

pub use crate::member::SERIAL_FLUSHES;
pub use fault::FaultMember;
