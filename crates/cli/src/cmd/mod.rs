pub mod bench;
pub mod create;
pub mod demo;
pub mod rawio;
pub mod serve;
pub mod status;
