//! CodeRun types (filled in by the execution issue).
