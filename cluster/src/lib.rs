//! Local clusters.
