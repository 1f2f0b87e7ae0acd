//! pgoutput decoding.
