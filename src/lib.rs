pub mod config;
pub mod selfsigned;
