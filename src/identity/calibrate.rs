//! `gatehouse hash calibrate`: the scrypt cost that takes about a chosen
//! time on this machine.

use std::time::{Duration, Instant};

use super::password::{HashError, hash_blocking};

/// Finds the scrypt `log_n` whose hash takes closest to `target` on this
/// machine (r and p fixed), measuring each candidate once: each `log_n`
/// from 10 up with its time in milliseconds, until one takes twice the
/// target.
pub fn calibrate(target: Duration, r: u32, p: u32) -> Result<Vec<(u8, f64)>, HashError> {
    let mut results = Vec::new();
    for log_n in 10..=22u8 {
        let params = scrypt::Params::new(log_n, r, p, scrypt::Params::RECOMMENDED_LEN)?;
        let start = Instant::now();
        hash_blocking(&params, "calibration password")?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        results.push((log_n, ms));
        if ms > target.as_secs_f64() * 1000.0 * 2.0 {
            break;
        }
    }
    Ok(results)
}
