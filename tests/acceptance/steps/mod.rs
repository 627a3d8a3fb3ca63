//! The steps of `features/`, one file for each feature: the services a
//! feature's background starts (`services`), then `identity`, `auth`,
//! `gateway` and `authz`. The steps that read the answer, which every
//! feature shares, are here.

use cucumber::then;

use crate::Platform;

mod auth;
mod authz;
mod gateway;
mod identity;
mod services;

#[then(expr = "the answer is {int}")]
fn answer_is(world: &mut Platform, status: u16) {
    assert_eq!(world.status, status, "{}", world.body);
}

#[then(expr = "the answer is a {int} problem {string}")]
fn problem(world: &mut Platform, status: u16, code: String) {
    assert_eq!(world.status, status, "{}", world.body);
    assert_eq!(world.body["code"], code.as_str());
}
