//! ARM test server (below).
