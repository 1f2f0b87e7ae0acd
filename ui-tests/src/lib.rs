//! Compile tests of walflow's macros live in `tests/`.
