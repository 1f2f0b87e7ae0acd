//! The blog example.

fn main() {}
