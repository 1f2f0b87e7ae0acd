//! Throwaway PostgreSQL clusters.
