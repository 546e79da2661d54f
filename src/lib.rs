//! pool-managerd
