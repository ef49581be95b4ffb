#![allow(dead_code)]
pub mod capture;
pub mod pg;
pub mod scenarios;
