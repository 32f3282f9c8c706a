pub mod bench;
pub mod create;
pub mod rawio;
pub mod status;
