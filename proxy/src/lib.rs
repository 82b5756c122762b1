//! pgrelay library.
